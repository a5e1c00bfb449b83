"""The CLI and the API never import torch: only workers do."""

import subprocess
import sys
from pathlib import Path

CHECK = """
import sys
from click.testing import CliRunner
from cli.main import cli
r = CliRunner().invoke(cli, {args!r})
assert r.exit_code == {code}, (r.exit_code, r.output)
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
assert not loaded, loaded[:5]
print("ok")
"""


def run_check(args: list[str], code: int, cwd: Path) -> None:
    out = subprocess.run([sys.executable, "-c", CHECK.format(args=args, code=code)],
                         capture_output=True, text=True, cwd=cwd, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_help_status_and_submit_do_not_import_torch(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text('{"kind": "generate", "seed": 1}\n')
    run_check(["--help"], 0, tmp_path)
    run_check(["db", "upgrade", "--data-dir", data], 0, tmp_path)
    run_check(["submit", str(manifest), "--project", "p", "--data-dir", data], 0, tmp_path)
    run_check(["status", "--data-dir", data], 0, tmp_path)
    run_check(["kinds"], 0, tmp_path)
    run_check(["models"], 0, tmp_path)
    run_check(["audio", "analyse", "--help"], 0, tmp_path)
    run_check(["audio", "analyse", "in/none.wav", "-p", "p", "--data-dir", data], 2, tmp_path)
