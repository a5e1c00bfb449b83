"""A regular (non-editable) install must carry every module: the Docker image installs that way."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("jobs", "workers", "storage", "migrations", "cli", "api")


def test_the_wheel_holds_every_module_and_migration(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    str(ROOT), "-w", str(tmp_path)], check=True, capture_output=True, timeout=300)
    [wheel] = tmp_path.glob("genfarm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {p.relative_to(ROOT).as_posix() for pkg in PACKAGES
                for p in (ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts}
    assert expected <= names, sorted(expected - names)
    assert "migrations/script.py.mako" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "genfarm = cli.main:main" in zipfile.ZipFile(wheel).read(entry).decode()
