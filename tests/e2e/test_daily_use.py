"""A pipeline TD's day with real processes (worker, Redis, PostgreSQL): batches found by name and
label, progress lines a CI log can hold, retries logged as retries, files named from params, and
Celery's own command line reading the farm (units named by what they carry)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from jobs.db import upgrade
from tests.conftest import BIN, Workers, run_cli


def celery(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "celery"), "-A", "workers.celery", *args],
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=timeout)


def test_a_day_of_batches_through_the_cli_and_celery(tmp_path: Path, workers: Workers,
                                                    pg_url: str, redis_url: str) -> None:
    env = {"GENFARM_DATABASE_URL": pg_url, "GENFARM_BROKER_URL": redis_url,
           "GENFARM_STORAGE_URL": (tmp_path / "out").as_uri(),
           "GENFARM_DATA_DIR": str(tmp_path / "data"), "GENFARM_PROGRESS_SECONDS": "0.2"}
    upgrade(pg_url)
    events_log = (tmp_path / "events.log").open("w")
    events = subprocess.Popen([str(BIN / "celery"), "-A", "workers.celery", "events", "--dump"],
                              env={**os.environ, **env}, stdout=events_log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        workers.start(env, "--max-batch", "4")
        deadline = time.monotonic() + 90
        ping = celery(env, "inspect", "ping", "--timeout", "5")
        while "pong" not in ping.stdout and time.monotonic() < deadline:
            time.sleep(1)
            ping = celery(env, "inspect", "ping", "--timeout", "5")
        assert ping.returncode == 0 and "pong" in ping.stdout, ping.stdout + ping.stderr
        queues = celery(env, "inspect", "active_queues", "--timeout", "5")
        assert queues.returncode == 0 and "'noop'" in queues.stdout, queues.stdout

        manifest = tmp_path / "shot.jsonl"
        manifest.write_text("\n".join(json.dumps(line) for line in [
            {"kind": "noop", "tag": {"range": [0, 6]}, "payload_bytes": 32},
            {"kind": "noop", "tag": 100, "fail": "transient"},
            {"kind": "noop", "tag": 200, "fail": "always", "max_attempts": 2},
        ]) + "\n")
        # piped, as in CI: plain progress lines, no carriage returns, exit 1 (one job failed)
        done = run_cli("submit", str(manifest), "-p", "acme", "--name", "sh010 lookdev",
                       "--label", "shot=010", "--label", "artist=mia", "--wait", "--json",
                       env=env)
        assert done.returncode == 1, done.stderr
        summary = json.loads(done.stdout or "null") or pytest.fail(done.stderr)
        batch = summary["id"]
        assert (summary["name"], summary["labels"]) == ("sh010 lookdev",
                                                         {"artist": "mia", "shot": "010"})
        assert "\r" not in done.stderr
        lines = [ln for ln in done.stderr.splitlines() if ln.startswith(f"batch {batch[:8]}:")]
        assert lines and lines[-1].startswith(f"batch {batch[:8]}: 8/8 done (100%)"), done.stderr
        assert lines[-1].endswith(", failed")
        other = run_cli("submit", str(manifest), "-p", "acme", "--label", "shot=020", env=env)
        assert other.returncode == 0, other.stderr

        # found by label and name, alone; usage of the shot alone
        found = json.loads(run_cli("status", "--label", "shot=010", "--json", env=env).stdout)
        assert [b["id"] for b in found] == [batch]
        found = json.loads(run_cli("status", "--name", "sh010 lookdev", "--label",
                                   "artist=mia", "--json", env=env).stdout)
        assert [b["id"] for b in found] == [batch]
        assert json.loads(run_cli("status", "--label", "shot=010", "--label", "artist=joe",
                                  "--json", env=env).stdout) == []
        table = run_cli("status", "-p", "acme", env=env).stdout.splitlines()
        assert table[0].split()[:4] == ["BATCH", "PROJECT", "NAME", "STATUS"]
        assert any(batch[:12] in row and "artist=mia shot=010" in row for row in table[1:])
        [spent] = json.loads(run_cli("usage", "--label", "shot=010", "--json", env=env).stdout)
        assert spent["jobs"] == 8 and spent["succeeded"] == 7
        shown = run_cli("status", batch, env=env).stdout
        assert "labels    artist=mia  shot=010" in shown and "sh010 lookdev" in shown
        assert "submitted" in shown and " ago, ran " in shown

        # the worker's log tells a retry from a failure
        log = workers.logs(tail=None)
        assert "attempt 1 of 3 failed, retrying" in log, log[-3000:]
        assert "failed on attempt 1 of 2 (not retryable)" in log, log[-3000:]

        # files named from params; a template that gives two jobs one name is refused
        pulled = run_cli("pull", batch, str(tmp_path / "named"), "--name", "shot_{tag:03d}",
                         env=env)
        assert pulled.returncode == 0, pulled.stderr
        names = sorted(p.name for p in (tmp_path / "named").iterdir())
        assert names == ["manifest.jsonl", *[f"shot_{t:03d}.bin" for t in (0, 1, 2, 3, 4, 5,
                                                                         100)]]
        clash = run_cli("pull", batch, str(tmp_path / "clash"), "--name", "{kind}", env=env)
        assert clash.returncode == 2 and "add a field that differs" in clash.stderr
        assert not (tmp_path / "clash").exists() or not any((tmp_path / "clash").iterdir())
    finally:
        os.killpg(events.pid, signal.SIGTERM)
        events.wait(timeout=20)
        events_log.close()
    # Celery's event stream names each unit by what it carries, not genfarm.run_unit
    dumped = (tmp_path / "events.log").read_text()
    assert f"batch {batch[:8]}]" in dumped and "noop:noop [" in dumped, dumped[-3000:]


def test_shell_completion_as_documented(tmp_path: Path) -> None:
    script = run_cli(env={"_GENFARM_COMPLETE": "bash_source"})
    assert script.returncode == 0 and "complete -o nosort -F _genfarm_completion genfarm" in \
        script.stdout
    words = run_cli(env={"_GENFARM_COMPLETE": "bash_complete", "COMP_WORDS": "genfarm sta",
                         "COMP_CWORD": "1"})
    assert "plain,status" in words.stdout.splitlines()
    options = run_cli(env={"_GENFARM_COMPLETE": "bash_complete",
                           "COMP_WORDS": "genfarm status --la", "COMP_CWORD": "2"})
    assert "plain,--label" in options.stdout.splitlines()
