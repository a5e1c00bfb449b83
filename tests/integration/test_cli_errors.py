"""Every failure a user can cause ends in one `error: ...` line and a non-zero exit, never a
traceback: bad URLs, unusable folders, bad revisions, ambiguous ids, oversized manifests; and
user text cannot drive the terminal. Each case runs the real `genfarm` command."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import func, insert, select

from cli.io import printable
from jobs.db import alembic_config, make_engine, session_factory
from jobs.models import Batch, Job, Project
from tests.conftest import BIN, free_port, run_cli

HEAD = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
NOOP = '{"kind": "noop"}\n'


def one_error(result: subprocess.CompletedProcess[str], *names: str, code: int = 1) -> str:
    """The result failed with ``code`` and said so on stderr in one `error:` line naming ``names``."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def embedded(tmp_path: Path) -> dict[str, str]:
    """Everything under a data folder of this test: SQLite, filesystem broker, local outputs."""
    return {"GENFARM_DATA_DIR": str(tmp_path / "data")}


def sqlite_of(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'data' / 'genfarm.db'}"


def batch_count(url: str) -> int:
    engine = make_engine(url)
    try:
        with session_factory(engine)() as s:
            return int(s.scalar(select(func.count()).select_from(Batch)) or 0)
    finally:
        engine.dispose()


# -- settings: database and broker URLs -------------------------------------------------------
@pytest.mark.parametrize("url, named", [
    ("postgresql+psycopg://x:secretpw@[bad", "malformed host"),
    ("nonsense", "not a SQLAlchemy URL"),
    ("postgresql+nodriver://x/y", "unknown database or driver 'postgresql+nodriver'"),
    ("warpdb://x/y", "unknown database or driver 'warpdb'"),
    ("postgresql://h:port/db", "'port'"),
])
def test_a_bad_database_url_is_one_line_naming_it(tmp_path: Path, url: str, named: str) -> None:
    result = run_cli("db", "upgrade", "--database-url", url, env=embedded(tmp_path))
    line = one_error(result, "database URL", named, "--database-url", code=2)
    assert "secretpw" not in line  # a password never reaches the terminal
    assert not (tmp_path / "data").exists()  # refused before anything was made


@pytest.mark.parametrize("command", [
    ["submit", "jobs.jsonl", "--project", "acme"], ["reconcile"], ["worker"], ["retry", "abcdef", "--failed"],
])
def test_a_broker_url_with_an_unknown_transport_is_refused_before_anything_is_written(
        tmp_path: Path, command: list[str]) -> None:
    env = embedded(tmp_path)
    assert run_cli("db", "upgrade", env=env).returncode == 0
    (tmp_path / "jobs.jsonl").write_text(NOOP)
    result = run_cli(*command, "--broker-url", "nonsense://", env=env, cwd=tmp_path, timeout=60)
    one_error(result, "broker URL", "unknown transport 'nonsense'", code=2)
    assert batch_count(sqlite_of(tmp_path)) == 0


def test_an_unreachable_broker_is_one_line_naming_it(tmp_path: Path) -> None:
    env = embedded(tmp_path)
    assert run_cli("db", "upgrade", env=env).returncode == 0
    (tmp_path / "jobs.jsonl").write_text(NOOP)
    broker = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    # submit records the batch and leaves publishing to a reconciler; the reconciler says why not
    assert run_cli("submit", "jobs.jsonl", "-p", "acme", "--broker-url", broker, env=env,
                   cwd=tmp_path, timeout=60).returncode == 0
    result = run_cli("reconcile", "--broker-url", broker, env=env, timeout=60)
    one_error(result, "broker unavailable", broker)


def test_a_bad_setting_from_the_environment_names_its_variable(tmp_path: Path) -> None:
    result = run_cli("status", env={**embedded(tmp_path), "GENFARM_UNIT_SIZE": "0"})
    one_error(result, "bad setting", "GENFARM_UNIT_SIZE", code=2)
    # settings that do not fit together: named both, without pydantic's wording
    result = run_cli("status", env={**embedded(tmp_path), "GENFARM_PULSE_GRACE_SECONDS": "3"})
    one_error(result, "bad setting GENFARM_PULSE_GRACE_SECONDS (3) must be more than twice "
              "GENFARM_PULSE_SECONDS (2)", code=2)


def test_an_unreachable_database_and_a_missing_schema_are_one_line(tmp_path: Path) -> None:
    down = run_cli("status", "--database-url", "postgresql+psycopg://postgres@127.0.0.1:1/none")
    one_error(down, "database unavailable", "127.0.0.1:1")
    empty = run_cli("status", env=embedded(tmp_path))
    one_error(empty, "no genfarm schema", "genfarm db upgrade")


def test_a_storage_url_with_an_unknown_scheme_is_one_line(tmp_path: Path) -> None:
    result = run_cli("pull", "abcdef", str(tmp_path / "out"), "--storage-url", "ftp://host/x",
                     env=embedded(tmp_path))
    one_error(result, "storage URL", "ftp://host/x")


# -- folders ------------------------------------------------------------------------------------
def unusable_folders(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "a-file").write_text("not a folder")
    return {
        "in /proc": Path("/proc/nope"),                      # no such folder can be made
        "read-only": Path("/sys/nope"),                      # EPERM, even for root
        "a file": tmp_path / "a-file",                       # a file where the folder should be
        "under a file": tmp_path / "a-file" / "sub" / "data",
    }


@pytest.mark.parametrize("case", ["in /proc", "read-only", "a file", "under a file"])
def test_an_unusable_data_folder_is_one_line_naming_it(tmp_path: Path, case: str) -> None:
    folder = unusable_folders(tmp_path)[case]
    result = run_cli("db", "upgrade", "--data-dir", str(folder))
    one_error(result, str(folder), "--data-dir")


def test_a_database_file_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    # /proc/self is a folder that exists but takes no files
    result = run_cli("status", "--data-dir", "/proc/self")
    one_error(result, "database unavailable", "genfarm.db", "unable to open database file")


# -- revisions ----------------------------------------------------------------------------------
def current(env: dict[str, str]) -> str:
    result = run_cli("db", "current", env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_upgrade_reports_the_revision_before_and_after(tmp_path: Path) -> None:
    env = embedded(tmp_path)
    first = run_cli("db", "upgrade", "--revision", "0001", env=env)
    assert first.returncode == 0, first.stderr
    assert "upgraded from an empty schema to 0001" in first.stdout
    again = run_cli("db", "upgrade", "--revision", "0001", env=env)
    assert "already at 0001" in again.stdout and "upgraded" not in again.stdout
    up = run_cli("db", "upgrade", env=env)
    assert f"upgraded from 0001 to {HEAD} (head)" in up.stdout, up.stdout
    done = run_cli("db", "upgrade", env=env)
    assert f"already at {HEAD} (head)" in done.stdout, done.stdout
    assert current(env) == HEAD


def test_upgrade_to_an_unknown_revision_is_one_line_and_changes_nothing(tmp_path: Path) -> None:
    env = embedded(tmp_path)
    assert run_cli("db", "upgrade", "--revision", "0001", env=env).returncode == 0
    result = run_cli("db", "upgrade", "--revision", "nonexistent", env=env)
    one_error(result, "revision", "'nonexistent'", code=2)
    assert current(env) == "0001"


@pytest.mark.parametrize("revision", ["0001", "-1", "base"])
def test_an_upgrade_that_would_go_back_is_refused_with_a_pointer_to_downgrade(
        tmp_path: Path, revision: str) -> None:
    env = embedded(tmp_path)
    assert run_cli("db", "upgrade", env=env).returncode == 0
    result = run_cli("db", "upgrade", "--revision", revision, env=env)
    one_error(result, f"is at {HEAD}", f"genfarm db downgrade --revision {revision}", code=2)
    assert current(env) == HEAD


def test_downgrade_goes_back_only_when_confirmed_and_says_where_from(tmp_path: Path) -> None:
    env = embedded(tmp_path)
    assert run_cli("db", "upgrade", env=env).returncode == 0
    declined = run_cli("db", "downgrade", "--revision", "0001", env=env, input=b"n\n")
    assert declined.returncode != 0 and "Traceback" not in declined.stderr
    assert current(env) == HEAD
    down = run_cli("db", "downgrade", "--revision", "0001", "--yes", env=env)
    assert down.returncode == 0, down.stderr
    assert f"downgraded from {HEAD} to 0001" in down.stdout
    assert current(env) == "0001"


# -- ids and prefixes ---------------------------------------------------------------------------
def hexid(prefix: str, n: int) -> str:
    return (prefix + format(n, "x")).ljust(32, "0")


def seed(url: str, batches: dict[str, list[tuple[str, str]]], source: str = "jobs.jsonl",
         error: str | None = None) -> None:
    """Batches with the given ids, each with jobs (id, status): ids chosen to share prefixes."""
    engine = make_engine(url)
    try:
        with session_factory(engine).begin() as s:
            if s.get(Project, "acme") is None:
                s.add(Project(name="acme"))
                s.flush()
            for batch_id, jobs in batches.items():
                s.execute(insert(Batch).values(id=batch_id, project="acme", source=source,
                                               job_count=len(jobs)))
                for i, (job_id, status) in enumerate(jobs):
                    s.execute(insert(Job).values(
                        id=job_id, batch_id=batch_id, index=i, kind="noop", params={},
                        batch_key="noop", status=status, attempt=1 if status == "failed" else 0,
                        error=error if status == "failed" else None))
    finally:
        engine.dispose()


def statuses(url: str) -> dict[str, str]:
    engine = make_engine(url)
    try:
        with session_factory(engine)() as s:
            return {i: st for i, st in s.execute(select(Job.id, Job.status)).all()}
    finally:
        engine.dispose()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_an_ambiguous_prefix_says_matches_several_for_every_command(
        tmp_path: Path, database: str, request: pytest.FixtureRequest) -> None:
    env = embedded(tmp_path)
    if database == "postgresql":
        env["GENFARM_DATABASE_URL"] = request.getfixturevalue("pg_url")
    assert run_cli("db", "upgrade", env=env).returncode == 0
    url = env.get("GENFARM_DATABASE_URL") or sqlite_of(tmp_path)
    b1, b2, b3 = hexid("abcdef01", 1), hexid("abcdef02", 2), hexid("fedcba01", 3)
    j1, j2, j3 = hexid("1234561", 1), hexid("1234562", 2), hexid("fedcba02", 4)
    seed(url, {b1: [(j1, "failed")], b2: [(j2, "failed")], b3: [(j3, "queued")]})
    before = statuses(url)
    cases = [
        (["status", "abcdef"], [b1, b2]),
        (["pull", "abcdef", str(tmp_path / "out")], [b1, b2]),
        (["cancel", "abcdef"], [b1, b2]),
        (["retry", "abcdef", "--failed"], [b1, b2]),
        (["cancel", "123456"], [j1, j2]),         # two jobs
        (["retry", "123456", "--failed"], [j1, j2]),
        (["cancel", "fedcba"], [b3, j3]),         # a batch and a job
    ]
    for args, ids in cases:
        line = one_error(run_cli(*args, env=env, timeout=60), "matches several", *ids)
        assert "'" + args[1] + "'" in line, line
    assert statuses(url) == before  # an ambiguous prefix touched nothing

    # a unique prefix of either kind still works
    status = run_cli("status", b1[:10], "--json", env=env)
    assert status.returncode == 0 and json.loads(status.stdout)["id"] == b1
    cancel = run_cli("cancel", j3[:10], env=env)
    assert cancel.returncode == 0, cancel.stderr
    assert f"job {j3}" in cancel.stdout
    assert statuses(url)[j3] == "cancelled"
    missing = run_cli("cancel", "0badc0de", env=env)
    one_error(missing, "no batch or job '0badc0de'")


# -- what the terminal shows ---------------------------------------------------------------------
EVIL = "evil\x1b[2J\x1b]0;pwned\x07\rname\u202egpj.jsonl"


def test_status_escapes_control_characters_in_user_text(tmp_path: Path) -> None:
    env = embedded(tmp_path)
    assert run_cli("db", "upgrade", env=env).returncode == 0
    batch = hexid("c0ffee", 1)
    seed(sqlite_of(tmp_path), {batch: [(hexid("beef", 1), "failed")]}, source=EVIL,
         error="boom\x1b[31m red\rover")
    for args in (["status"], ["status", batch, "--failed"]):
        result = run_cli(*args, env=env)
        assert result.returncode == 0, result.stderr
        out = result.stdout
        assert "\x1b" not in out and "\r" not in out and "\x07" not in out and "\u202e" not in out
        assert printable(EVIL) in out  # shown, escaped: evil\x1b[2J...\rname\u202egpj.jsonl
        assert "\\x1b[2J" in out and "\\r" in out
    failed = run_cli("status", batch, "--failed", env=env).stdout
    assert "boom\\x1b[31m red\\rover" in failed
    # JSON output carries the exact text, escaped by JSON itself
    as_json = json.loads(run_cli("status", batch, "--json", env=env).stdout)
    assert as_json["source"] == EVIL


def test_a_bad_manifest_with_control_characters_in_its_name_is_reported_escaped(
        tmp_path: Path) -> None:
    env = embedded(tmp_path)
    assert run_cli("db", "upgrade", env=env).returncode == 0
    path = tmp_path / "bad\x1b[2J\r.jsonl"
    path.write_text('{"kind": "noop", "\x1b[2Jfield": 1}\n')
    result = run_cli("submit", str(path), "--project", "acme", env=env, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "\x1b" not in result.stderr and "\r" not in result.stderr
    assert "bad\\x1b[2J\\r.jsonl" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")


def test_printable_escapes_what_rewrites_a_terminal_and_keeps_the_rest() -> None:
    assert printable("plain name-1.jsonl é ü 日本") == "plain name-1.jsonl é ü 日本"
    assert printable("a\x1b[2Jb\rc\x00d\x7fe\x9bf") == "a\\x1b[2Jb\\rc\\x00d\\x7fe\\x9bf"
    assert printable("rtl\u202eoverride\u2066iso") == "rtl\\u202eoverride\\u2066iso"
    assert printable("two\nlines\t") == "two\\nlines\\t"
    assert printable("two\nlines\r", multiline=True) == "two\nlines\\r"


# -- manifests: paths and sizes ------------------------------------------------------------------
def test_manifest_and_destination_paths_a_user_gets_wrong(tmp_path: Path) -> None:
    env = embedded(tmp_path)
    (tmp_path / "a-dir").mkdir()
    (tmp_path / "a-file").write_text("x")
    missing = run_cli("submit", str(tmp_path / "missing.jsonl"), "--project", "acme", env=env)
    one_error(missing, "missing.jsonl", "does not exist", code=2)
    folder = run_cli("submit", str(tmp_path / "a-dir"), "--project", "acme", env=env)
    one_error(folder, "a-dir", "is a directory", code=2)
    no_project = run_cli("submit", str(tmp_path / "a-file"), env=env)
    one_error(no_project, "--project", "genfarm submit --help", code=2)
    into_file = run_cli("pull", "abcdef", str(tmp_path / "a-file"), env=env)
    one_error(into_file, "a-file", "is a file", code=2)


# Linux keeps a process's peak memory across exec, so a child forked straight from pytest would
# report pytest's own size: a small launcher process forks `genfarm` instead and reports the peak
# of its child alone.
LAUNCHER = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


def run_measured(args: list[str], env: dict[str, str], stdin: Any = subprocess.DEVNULL,
                 timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run `genfarm`; return its result and the peak resident memory (MiB) of that process."""
    result = subprocess.run([str(BIN / "python"), "-c", LAUNCHER, str(BIN / "genfarm"), *args],
                            env={**os.environ, **env}, stdin=stdin, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, timeout=timeout)
    *lines, peak_kib = result.stderr.rstrip("\n").split("\n")
    return (subprocess.CompletedProcess(args, result.returncode, "", "\n".join(lines) + "\n"),
            int(peak_kib) / 1024)


def test_submit_refuses_an_endless_file_at_the_limit_without_holding_more(tmp_path: Path) -> None:
    env = embedded(tmp_path)
    assert run_cli("db", "upgrade", env=env).returncode == 0
    result, rss_mib = run_measured(["submit", "/dev/zero", "--project", "acme"], env)
    one_error(result, "/dev/zero", "64 MiB limit", "--max-bytes", "nothing was submitted", code=2)
    assert rss_mib < 2 * 64 + 300, rss_mib  # the limit (at most twice) and the interpreter
    assert batch_count(sqlite_of(tmp_path)) == 0


def test_submit_refuses_an_endless_stdin_at_the_limit(tmp_path: Path) -> None:
    env = embedded(tmp_path)
    with open("/dev/zero", "rb") as zero:
        result, rss_mib = run_measured(["submit", "-", "--project", "acme"], env, stdin=zero)
    one_error(result, "stdin", "64 MiB limit", code=2)
    assert rss_mib < 2 * 64 + 300, rss_mib


def test_the_limit_is_exact_and_set_by_max_bytes(tmp_path: Path) -> None:
    env = embedded(tmp_path)
    assert run_cli("db", "upgrade", env=env).returncode == 0
    body = (NOOP * 100).encode()  # 1700 bytes
    path = tmp_path / "jobs.jsonl"
    path.write_bytes(body)
    size = str(len(body))
    over = run_cli("submit", str(path), "-p", "acme", "--max-bytes", str(len(body) - 1), env=env)
    one_error(over, "jobs.jsonl", f"{len(body) - 1} bytes limit", code=2)
    piped = run_cli("submit", "-", "-p", "acme", "--max-bytes", "1KiB", env=env, input=body)
    one_error(piped, "stdin", "1 KiB limit", code=2)
    assert batch_count(sqlite_of(tmp_path)) == 0
    exact = run_cli("submit", str(path), "-p", "acme", "--max-bytes", size, "--json", env=env)
    assert exact.returncode == 0, exact.stderr
    assert json.loads(exact.stdout)["job_count"] == 100
    bad = run_cli("submit", str(path), "-p", "acme", "--max-bytes", "lots", env=env)
    one_error(bad, "--max-bytes", "'lots'", code=2)


@pytest.mark.parametrize("name", ["ci\nerror: forged line", "ansi\x1b[2J", "bidi\u202eevil",
                                  "x" * 129])
def test_token_names_are_printable_labels(tmp_path: Path, name: str) -> None:
    """A token's label shows in listings and logs: control characters and overlong labels are
    refused (not cut or stored), and no token is made."""
    from jobs.models import ApiToken

    env = embedded(tmp_path)
    assert run_cli("db", "upgrade", env=env).returncode == 0
    result = run_cli("token", "create", "--project", "acme", "--name", name, env=env)
    one_error(result, "token name", "printable", code=1)
    assert "gf_" not in result.stdout
    engine = make_engine(sqlite_of(tmp_path))
    with session_factory(engine)() as s:
        assert s.scalar(select(func.count()).select_from(ApiToken)) == 0
    engine.dispose()
    ok = run_cli("token", "create", "--project", "acme", "--name", "nuke render é", env=env)
    assert ok.returncode == 0 and ok.stdout.startswith("gf_"), ok.stderr


@pytest.mark.parametrize("case", ["unknown family", "missing weights", "sha256 mismatch"])
def test_models_file_mistakes_are_one_clear_line_from_models_and_at_worker_start(
        tmp_path: Path, case: str) -> None:
    """What a studio gets wrong in its models file, through the real commands: `genfarm models`
    says what is wrong with which model, and a worker asked to serve it refuses to start."""
    weights = tmp_path / "hero.safetensors"
    weights.write_bytes(b"the studio's weights")
    body = {"unknown family": '[models.hero]\nfamily = "sdxl-turbo"\n',
            "missing weights": f'[models.hero]\nfamily = "aether"\nweights = "{tmp_path}/gone"\n',
            "sha256 mismatch": f'[models.hero]\nfamily = "aether"\nweights = "{weights}"\n'
                               f'sha256 = "{"0" * 64}"\n'}[case]
    said = {"unknown family": "unknown family 'sdxl-turbo'", "missing weights": "gone",
            "sha256 mismatch": "not the pinned"}[case]
    (tmp_path / "models.toml").write_text(body)
    env = {**embedded(tmp_path), "GENFARM_MODELS_FILE": str(tmp_path / "models.toml")}
    listed = run_cli("models", env=env)
    started = run_cli("worker", "--models", "hero", env=env)
    for result in (listed, started):
        text = result.stdout + result.stderr
        assert "Traceback" not in text and "hero" in text and said in text, (case, text)
    assert started.returncode != 0
    if case == "unknown family":  # the file itself is wrong: every command says so
        assert listed.returncode != 0
