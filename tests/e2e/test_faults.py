"""Nothing lost, nothing done twice, with real processes and real services under faults:
kill -9, a flushed broker, a stopped database, a flaky S3 endpoint, poison jobs, cancellation,
warm shutdown. Each test ends by counting: every job finished, one output each, no orphans."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import redis

from jobs.db import upgrade
from storage import open_storage
from tests.conftest import S3_ENV, PrivatePostgres, Workers, run_cli
from tests.helpers import Db, FlakyProxy, assert_exactly_one_output_each, submit


def farm_env(tmp_path: Path, db_url: str, broker_url: str, storage_url: str,
             **extra: str) -> dict[str, str]:
    return {"GENFARM_DATABASE_URL": db_url, "GENFARM_BROKER_URL": broker_url,
            "GENFARM_STORAGE_URL": storage_url, "GENFARM_DATA_DIR": str(tmp_path / "data"),
            "GENFARM_MODEL_PROFILE": "tiny", "GENFARM_LEASE_SECONDS": "4",
            "GENFARM_RECONCILE_INTERVAL": "1", "GENFARM_REPUBLISH_AFTER_SECONDS": "6", **extra}


def generate(n: int, size: int = 64) -> dict[str, object]:
    return {"kind": "generate", "seed": {"range": [0, n]}, "width": size, "height": size}


def start_farm(tmp_path: Path, workers: Workers, db_url: str, broker_url: str,
               line: dict[str, object], worker_args: tuple[str, ...] = ("--max-batch", "8"),
               storage_url: str | None = None,
               **extra: str) -> tuple[dict[str, str], str, Db, str]:
    """Migrate, submit one manifest line, start a worker: (env, batch id, db, storage URL)."""
    storage_url = storage_url or (tmp_path / "out").as_uri()
    env = farm_env(tmp_path, db_url, broker_url, storage_url, **extra)
    upgrade(db_url)
    batch = submit(env, tmp_path, line)
    db = Db(db_url)
    workers.start(env, *worker_args)
    return env, batch, db, storage_url


def attempts_match_events(db: Db, batch_id: str) -> None:
    """Each job's attempt count is its claims, and every extra claim follows a recorded loss."""
    claims: dict[str, int] = {}
    for e in db.events(batch_id):
        if e.to_status == "running":
            claims[e.job_id] = claims.get(e.job_id, 0) + 1
    for job in db.jobs(batch_id):
        assert job.attempt == claims.get(job.id, 0), (job.id, job.attempt, claims.get(job.id))


def test_kill_9_mid_batch_loses_and_duplicates_nothing(
        tmp_path: Path, workers: Workers, pg_url: str, redis_url: str, s3_bucket: str,
        s3_endpoint: str) -> None:
    storage_url = f"s3://{s3_bucket}/farm"
    env = farm_env(tmp_path, pg_url, redis_url, storage_url, AWS_ENDPOINT_URL=s3_endpoint, **S3_ENV)
    upgrade(pg_url)
    batch = submit(env, tmp_path, generate(400))
    db = Db(pg_url)
    first = workers.start(env, "--max-batch", "8")
    db.wait(batch, workers, until=lambda d: d.counts(batch).get("succeeded", 0) >= 60
            and d.counts(batch).get("running", 0) > 0)
    os.killpg(first.pid, signal.SIGKILL)  # the worker and its pool process, mid-pass
    first.wait(timeout=10)
    killed_at = db.counts(batch)
    workers.start(env, "--max-batch", "8")
    db.wait(batch, workers, timeout=300)
    assert_exactly_one_output_each(db, batch, open_storage(storage_url))
    attempts_match_events(db, batch)
    expired = [e for e in db.events(batch) if e.reason == "lease expired"]
    assert len(expired) >= 1 and len(expired) >= killed_at.get("running", 0) - 8
    assert max(j.attempt for j in db.jobs(batch)) == 2
    db.close()


def test_a_killed_workers_jobs_are_back_in_the_queue_within_15_s(
        tmp_path: Path, workers: Workers, pg_url: str, redis_url: str) -> None:
    """Default leases (120 s) and reconciler interval (30 s): the unit's pulse, not the lease,
    tells the second worker that the first is gone."""
    env = {"GENFARM_DATABASE_URL": pg_url, "GENFARM_BROKER_URL": redis_url,
           "GENFARM_STORAGE_URL": (tmp_path / "out").as_uri(),
           "GENFARM_DATA_DIR": str(tmp_path / "data"), "GENFARM_MODEL_PROFILE": "tiny"}
    upgrade(pg_url)
    db = Db(pg_url)
    second = workers.start(env, "--max-batch", "4")
    db.wait("", workers, until=lambda d: "ready" in workers.logs(tail=None), timeout=120)
    batch = submit(env, tmp_path, generate(240, size=96))
    first = workers.start(env, "--max-batch", "4")
    mine = f":{first.pid}:"  # lease owners are host:worker-pid:process-pid:claim
    db.wait(batch, workers, until=lambda d: any(
        j.status == "running" and mine in (j.lease_owner or "") for j in d.jobs(batch)))
    held = {j.id for j in db.jobs(batch) if j.status == "running" and mine in (j.lease_owner or "")}
    os.killpg(first.pid, signal.SIGKILL)  # the worker and its pool process, mid-unit
    killed = time.time()
    first.wait(timeout=10)
    db.wait(batch, workers, timeout=300)
    back = [e for e in db.events(batch) if e.reason == "lease expired" and e.job_id in held]
    assert back, workers.logs()
    first_back = min(e.at.timestamp() for e in back) - killed
    print(f"first job of the killed unit back in the queue {first_back:.1f} s after the kill")
    assert first_back <= 15, first_back
    assert {j.status for j in db.jobs(batch)} == {"succeeded"}
    assert second.poll() is None
    assert_exactly_one_output_each(db, batch, open_storage((tmp_path / "out").as_uri()))
    attempts_match_events(db, batch)
    db.close()


def test_flushall_while_queued_and_running(tmp_path: Path, workers: Workers, pg_url: str,
                                           redis_url: str) -> None:
    _, batch, db, storage_url = start_farm(tmp_path, workers, pg_url, redis_url, generate(400))
    db.wait(batch, workers, until=lambda d: d.counts(batch).get("succeeded", 0) >= 40)
    client = redis.Redis.from_url(redis_url)
    client.flushall()  # every queued message and the unacked one are gone
    assert client.llen("generate") == 0
    db.wait(batch, workers, timeout=300)
    assert_exactly_one_output_each(db, batch, open_storage(storage_url))
    attempts_match_events(db, batch)
    db.close()


def test_postgres_stopped_under_load(tmp_path: Path, workers: Workers, private_pg: PrivatePostgres,
                                     redis_url: str) -> None:
    _, batch, db, storage_url = start_farm(tmp_path, workers, private_pg.url, redis_url,
                                           generate(300))
    db.wait(batch, workers, until=lambda d: d.counts(batch).get("succeeded", 0) >= 30)
    private_pg.stop()
    time.sleep(5)
    private_pg.start()
    db.wait(batch, workers, timeout=300)
    assert_exactly_one_output_each(db, batch, open_storage(storage_url))
    attempts_match_events(db, batch)
    db.close()


def test_flaky_s3_endpoint(tmp_path: Path, workers: Workers, pg_url: str, redis_url: str,
                           s3_bucket: str, s3_endpoint: str) -> None:
    proxy = FlakyProxy(s3_endpoint, fail_every=3)  # a third of all uploads get a 503
    try:
        storage_url = f"s3://{s3_bucket}/flaky"
        env = farm_env(tmp_path, pg_url, redis_url, storage_url, AWS_ENDPOINT_URL=proxy.url,
                       **S3_ENV)
        upgrade(pg_url)
        batch = submit(env, tmp_path, generate(120))
        db = Db(pg_url)
        workers.start(env, "--max-batch", "16")
        db.wait(batch, workers, timeout=300)
        assert proxy.failed >= 30  # the faults really happened
        assert_exactly_one_output_each(db, batch, open_storage(storage_url))  # read past the proxy
        db.close()
    finally:
        proxy.close()


def test_poison_oom_and_transient_jobs(tmp_path: Path, workers: Workers, pg_url: str,
                                       redis_url: str) -> None:
    storage_url = (tmp_path / "out").as_uri()
    env = farm_env(tmp_path, pg_url, redis_url, storage_url)
    upgrade(pg_url)
    poison = submit(env, tmp_path, {"kind": "noop", "tag": {"range": [0, 15]}},
                    {"kind": "noop", "tag": 15, "fail": "always"},
                    {"kind": "noop", "tag": {"range": [16, 32]}})
    oom = submit(env, tmp_path, {"kind": "noop", "tag": {"range": [100, 132]}, "oom_above": 5})
    flaky = submit(env, tmp_path, {"kind": "noop", "tag": {"range": [200, 204]}, "fail": "transient"})
    db = Db(pg_url)
    workers.start(env, "--max-batch", "32")
    for batch in (poison, oom, flaky):
        db.wait(batch, workers)
    jobs = db.jobs(poison)
    assert len(jobs) == 32 and db.counts(poison) == {"succeeded": 31, "failed": 1}
    [bad] = [j for j in jobs if j.status == "failed"]
    assert bad.params["fail"] == "always" and "this job always fails" in bad.error
    assert bad.attempt == 1  # a permanent error: no retries
    assert db.counts(oom) == {"succeeded": 32}
    assert "passes of noop:noop now hold 4" in workers.logs(tail=None)
    assert db.counts(flaky) == {"succeeded": 4} and {j.attempt for j in db.jobs(flaky)} == {2}
    status = run_cli("status", poison, "--failed", env=env)
    assert "this job always fails" in status.stdout
    # retry on demand: the poison job runs again, and fails again, alone
    retried = run_cli("retry", poison, "--failed", env=env)
    assert retried.returncode == 0 and "requeued 1" in retried.stdout, retried.stderr
    db.wait(poison, workers, until=lambda d: d.finished(poison)
            and [j.attempt for j in d.jobs(poison) if j.status == "failed"] == [2])
    assert db.counts(poison) == {"succeeded": 31, "failed": 1}
    db.close()


def test_cancel_mid_run_starts_nothing_afterwards(tmp_path: Path, workers: Workers, pg_url: str,
                                                  redis_url: str) -> None:
    env, batch, db, storage_url = start_farm(tmp_path, workers, pg_url, redis_url, generate(400))
    db.wait(batch, workers, until=lambda d: d.counts(batch).get("succeeded", 0) >= 16)
    result = run_cli("cancel", batch[:10], env=env)
    assert result.returncode == 0 and "cancelled" in result.stdout, result.stderr
    from jobs.models import utcnow

    returned = utcnow()
    db.wait(batch, workers)
    assert db.finished(batch).status == "cancelled"
    assert not [e for e in db.events(batch) if e.to_status == "running" and e.at > returned]
    counts = db.counts(batch)
    assert counts.get("cancelled", 0) > 0 and set(counts) <= {"succeeded", "cancelled"}
    outputs = db.outputs(batch)
    succeeded = {j.id for j in db.jobs(batch) if j.status == "succeeded"}
    assert {o.job_id for o in outputs} == succeeded
    store = open_storage(storage_url)
    expected = {o.key for o in outputs} | {store.batch_prefix("acme", batch) + "manifest.jsonl"}
    # a pass under way when the cancel came uploads its jobs' images, then deletes them when
    # it records them (they are no longer the worker's): the bucket holds no orphan after it
    deadline = time.monotonic() + 15
    while (keys := set(store.list(store.batch_prefix("acme", batch)))) != expected:
        assert time.monotonic() < deadline, keys ^ expected
        time.sleep(0.1)
    db.close()


def test_warm_shutdown_hands_unstarted_jobs_back(tmp_path: Path, workers: Workers, pg_url: str,
                                                 redis_url: str) -> None:
    storage_url = (tmp_path / "out").as_uri()
    env = farm_env(tmp_path, pg_url, redis_url, storage_url, GENFARM_LEASE_SECONDS="300",
                   GENFARM_REPUBLISH_AFTER_SECONDS="300")
    upgrade(pg_url)
    # 256x256: a unit's 64 jobs take seconds however fast the worker's passes get, so the
    # shutdown lands mid-unit
    batch = submit(env, tmp_path, generate(256, size=256))
    db = Db(pg_url)
    first = workers.start(env, "--max-batch", "4")
    # mid-unit: some passes recorded and at least three more passes' worth still claimed
    db.wait(batch, workers, until=lambda d: d.counts(batch).get("succeeded", 0) >= 8
            and d.counts(batch).get("running", 0) >= 12)
    started = time.monotonic()
    os.kill(first.pid, signal.SIGTERM)  # warm shutdown of the worker's main process
    first.wait(timeout=60)
    assert time.monotonic() - started < 30
    handed = [e for e in db.events(batch) if e.reason == "worker shutting down"]
    assert handed, workers.logs()
    assert db.counts(batch).get("running", 0) == 0  # nothing waits for a lease to expire
    # leases are long here: only the hand-back (not expiry) lets the next worker finish quickly
    workers.start(env, "--max-batch", "16")
    db.wait(batch, workers, timeout=300)
    assert_exactly_one_output_each(db, batch, open_storage(storage_url))
    assert {j.attempt for j in db.jobs(batch) if j.id in {e.job_id for e in handed}} == {1}
    db.close()


def test_reconcile_command_reports_json(tmp_path: Path, pg_url: str, redis_url: str) -> None:
    env = farm_env(tmp_path, pg_url, redis_url, (tmp_path / "out").as_uri())
    upgrade(pg_url)
    submit(env, tmp_path, generate(3))
    out = run_cli("reconcile", env=env)
    assert out.returncode == 0 and '"requeued": 0' in out.stdout


def test_worker_processes_recycle_after_a_task_count(tmp_path: Path, workers: Workers, pg_url: str,
                                                     redis_url: str) -> None:
    _, batch, db, _ = start_farm(tmp_path, workers, pg_url, redis_url,
                                 {"kind": "noop", "tag": {"range": [0, 64]}},
                                 ("--max-tasks-per-child", "1"), GENFARM_UNIT_SIZE="16")
    db.wait(batch, workers)
    assert db.counts(batch) == {"succeeded": 64}
    # lease owners are host:worker:process:claim; each unit ran in a fresh pool process: no
    # process made a second claim (a unit may take fewer than 16 when another claim or the
    # reconciler holds some of its rows for an instant; a later unit, in its own process, takes
    # the rest)
    claims = {tuple(e.worker.split(":")[2:4]) for e in db.events(batch) if e.to_status == "running"}
    per_process = [p for p, _ in claims]
    assert len(per_process) == len(set(per_process)) >= 4, sorted(claims)
    db.close()


def test_a_unit_past_its_time_limit_hands_its_jobs_to_retries(
        tmp_path: Path, workers: Workers, pg_url: str, redis_url: str) -> None:
    # one unit of 64 large images takes far longer than 5 seconds on a CPU (a pass or two fit)
    _, batch, db, _ = start_farm(
        tmp_path, workers, pg_url, redis_url,
        {"kind": "generate", "seed": {"range": [0, 64]}, "width": 512, "height": 512,
         "max_attempts": 1}, ("--max-batch", "4"),
        GENFARM_UNIT_TIME_LIMIT="5", GENFARM_MODEL_PROFILE="default")
    db.wait(batch, workers, timeout=300)
    jobs = db.jobs(batch)
    timed_out = [j for j in jobs if j.status == "failed"]
    assert timed_out and {j.error for j in timed_out} == {"unit time limit exceeded"}
    assert {j.status for j in jobs} <= {"succeeded", "failed"}  # none lost, none left running
    assert len(db.outputs(batch)) == sum(j.status == "succeeded" for j in jobs)
    # a timed-out unit's uploads that had started finished before its jobs went back, the
    # others never started: each object stored is a succeeded job's, as recorded, and none
    # lands later (over what a rerun would store)
    time.sleep(2)
    out = tmp_path / "out"
    ids = {j.id for j in jobs}
    stored = {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
              for p in out.rglob("*")
              if p.is_file() and p.parent.name in ids and not p.name.startswith(".tmp-")}
    assert stored == {o.key: o.sha256 for o in db.outputs(batch)}
    db.close()
