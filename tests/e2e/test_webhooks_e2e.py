"""Webhooks with a real `genfarm worker` process (PostgreSQL, Redis): a finished noop batch
reaches a receiver on loopback as one signed POST, after the batch was finalized; batches whose
receiver is down or too slow are finalized as promptly, their attempts recorded and retried;
the worker stops cleanly."""

from __future__ import annotations

import json
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jobs.db import upgrade
from jobs.webhooks import deliveries_of, verify
from tests.conftest import Workers, free_port, run_cli
from tests.e2e.test_faults import farm_env
from tests.helpers import Db
from tests.integration.test_webhooks import Receiver

HOOKS = {"GENFARM_WEBHOOK_INTERVAL_SECONDS": "0.2", "GENFARM_WEBHOOK_TIMEOUT_SECONDS": "1",
         "GENFARM_WEBHOOK_BACKOFF_SECONDS": "0.5", "GENFARM_WEBHOOK_MAX_ATTEMPTS": "3"}


def send(env: dict[str, str], tmp_path: Path, n: int, *webhook: str) -> str:
    path = tmp_path / f"noop-{time.monotonic_ns()}.jsonl"
    path.write_text(json.dumps({"kind": "noop", "tag": {"range": [0, n]}}) + "\n")
    args = ["--webhook", webhook[0]] if webhook else []
    out = run_cli("submit", str(path), "--project", "acme", "--json", *args, env=env)
    assert out.returncode == 0, out.stderr
    return str(json.loads(out.stdout)["batch_id"])


def deliveries(db: Db, batch: str) -> list[tuple[Any, list[Any]]]:
    with db.sessions() as s:
        return deliveries_of(s, batch)


def wait_for(check: Any, workers: Workers, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out\n{workers.logs()}")


def closed_promptly(db: Db, batch: str) -> float:
    """Seconds from the batch's last job finishing to the batch being finalized."""
    finished = db.finished(batch)
    assert finished is not None and finished.finished_at is not None
    last = max(j.finished_at for j in db.jobs(batch) if j.finished_at is not None)
    return (finished.finished_at - last).total_seconds()


def test_a_worker_notifies_a_signed_post_and_a_dead_receiver_delays_nothing(
        tmp_path: Path, workers: Workers, pg_url: str, redis_url: str) -> None:
    env = farm_env(tmp_path, pg_url, redis_url, (tmp_path / "out").as_uri(), **HOOKS)
    upgrade(pg_url)
    hook, slow = Receiver(), Receiver(delay=5.0)
    try:
        made = run_cli("webhook", "set", "--project", "acme", "--url", hook.url, env=env)
        assert made.returncode == 0, made.stderr
        secret = next(line.split()[1] for line in made.stdout.splitlines()
                      if line.startswith("secret "))
        db = Db(pg_url)
        worker = workers.start(env, "--max-batch", "8", "--concurrency", "1")
        down = send(env, tmp_path, 6, f"http://127.0.0.1:{free_port()}/hook")
        held = send(env, tmp_path, 6, slow.url)
        batch = send(env, tmp_path, 12)
        for b in (down, held, batch):
            db.wait(b, workers, timeout=120)

        [got] = wait_for(lambda: hook.got, workers)
        received = datetime.now(UTC)
        assert verify(secret, got.body, got.headers["X-Genfarm-Signature"])
        payload = json.loads(got.body)
        assert payload["batch"]["id"] == batch and payload["batch"]["status"] == "succeeded"
        assert payload["batch"]["counts"]["succeeded"] == 12
        finished = db.finished(batch)
        assert finished is not None and finished.finished_at is not None
        assert finished.finished_at <= received
        [(row, attempts)] = wait_for(lambda: [d for d in deliveries(db, batch)
                                              if d[0].status == "delivered"], workers)
        assert row.id == payload["delivery_id"] == got.headers["X-Genfarm-Delivery"]
        assert finished.finished_at <= attempts[0].at and len(attempts) == 1

        # the dead and the slow receiver: their batches closed as promptly, the attempts went on
        for b in (down, held, batch):
            assert closed_promptly(db, b) < 3.0, b
        [(row, attempts)] = wait_for(lambda: [d for d in deliveries(db, down)
                                              if d[0].status == "failed"], workers)
        assert [a.error for a in attempts] == ["connection refused"] * 3
        [(row, attempts)] = wait_for(lambda: [d for d in deliveries(db, held) if d[1]], workers)
        assert attempts[0].error == "timed out after 1 s" and slow.got
        assert len(hook.got) == 1  # no other batch told this receiver anything

        workers.stop(worker, signal.SIGTERM, timeout=30)
        assert worker.returncode == 0, workers.logs()
        logs = workers.logs(None)
        assert "webhook pass failed" not in logs and "the database failed" not in logs
        db.close()
    finally:
        hook.close()
        slow.close()
