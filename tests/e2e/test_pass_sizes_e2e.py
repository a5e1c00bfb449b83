"""A real worker measures its pass sizes on its own jobs and shares the best one; a second worker
process takes it from the database without measuring again. Lone jobs wait, boundedly, to share
a pass; a CPU worker runs a one-thread process per core."""

from __future__ import annotations

import re
import time
from pathlib import Path

from sqlalchemy import select

from cli.worker import cpu_cores
from jobs.db import make_engine, session_factory, upgrade
from jobs.models import PassSize
from tests.conftest import Workers
from tests.helpers import Db, submit


def test_a_worker_measures_pass_sizes_and_the_next_one_reuses_them(
        tmp_path: Path, workers: Workers, pg_url: str, redis_url: str) -> None:
    env = {"GENFARM_DATABASE_URL": pg_url, "GENFARM_BROKER_URL": redis_url,
           "GENFARM_STORAGE_URL": (tmp_path / "out").as_uri(),
           "GENFARM_DATA_DIR": str(tmp_path / "data"), "GENFARM_MODEL_PROFILE": "tiny"}
    upgrade(pg_url)
    db = Db(pg_url)
    first = workers.start(env, "--max-batch", "4")
    batch = submit(env, tmp_path, {"kind": "generate", "seed": {"range": [0, 40]}, "width": 48,
                                   "height": 48})
    db.wait(batch, workers)
    engine = make_engine(pg_url)
    with session_factory(engine)() as s:
        [row] = s.scalars(select(PassSize)).all()
    engine.dispose()
    assert row.key == f"generate:aether:48x48|cpu:{cpu_cores()}-thread|float64"  # one process
    assert set(row.rates) == {"1", "2", "4"}
    assert row.best == max((1, 2, 4), key=lambda n: row.rates[str(n)])
    assert "chosen" in workers.logs(tail=None)
    workers.stop(first)
    workers.start(env, "--max-batch", "4")
    again = submit(env, tmp_path, {"kind": "generate", "seed": {"range": [100, 140]},
                                   "width": 48, "height": 48})
    db.wait(again, workers)
    assert workers.logs(tail=None).count("chosen") == 1  # read, not measured again
    db.close()


def test_lone_jobs_from_separate_submissions_share_a_pass_within_the_wait(
        tmp_path: Path, workers: Workers, pg_url: str, redis_url: str) -> None:
    """A unit with fewer jobs than its best pass holds waits (boundedly) for jobs of the same
    key from later submissions: two one-job batches sent 0.5 s apart run in one unit. Without
    the wait, or where the best pass is one job, each runs alone. (One process, warmed up by a
    first job: a cold one sets its model up before it claims, and by then both are queued.)"""
    env = {"GENFARM_DATABASE_URL": pg_url, "GENFARM_BROKER_URL": redis_url,
           "GENFARM_STORAGE_URL": (tmp_path / "out").as_uri(),
           "GENFARM_DATA_DIR": str(tmp_path / "data"), "GENFARM_MODEL_PROFILE": "tiny"}
    upgrade(pg_url)
    db = Db(pg_url)
    engine = make_engine(pg_url)

    def units_of(wait: str, best: int, seed: int) -> set[str | None]:
        with session_factory(engine).begin() as s:  # as if a worker had measured the key
            s.merge(PassSize(key=f"generate:aether:40x40|cpu:{cpu_cores()}-thread|float64",
                             best=best, rates={}))
        worker = workers.start({**env, "GENFARM_BATCH_WAIT_SECONDS": wait}, "--max-batch", "4",
                               "--concurrency", "1")
        job = {"kind": "generate", "seed": seed, "width": 40, "height": 40}
        # warmed up by a unit of a full pass (which waits for nothing)
        db.wait(submit(env, tmp_path, {**job, "seed": {"range": [seed + 2, seed + 2 + best]}}),
                workers)
        first = submit(env, tmp_path, job)
        time.sleep(0.5)
        second = submit(env, tmp_path, {**job, "seed": seed + 1})
        db.wait(first, workers)
        db.wait(second, workers)
        workers.stop(worker)
        assert db.counts(first) == db.counts(second) == {"succeeded": 1}
        return {e.worker for b in (first, second) for e in db.events(b) if e.to_status == "running"}

    assert len(units_of("8", 2, 0)) == 1  # one claim, one unit: the second job joined the first
    assert len(units_of("0", 2, 10)) == 2  # no wait
    assert len(units_of("8", 1, 20)) == 2  # the best pass is one job: nothing to wait for
    engine.dispose()
    db.close()


def test_a_cpu_worker_runs_a_process_per_core_with_the_cores_shared(
        tmp_path: Path, workers: Workers, pg_url: str, redis_url: str) -> None:
    """`--concurrency auto`, the default, on a machine without a GPU: one pool process per core,
    each computing with its share of the cores as torch threads (one), and all of them take
    units of one batch."""
    env = {"GENFARM_DATABASE_URL": pg_url, "GENFARM_BROKER_URL": redis_url,
           "GENFARM_STORAGE_URL": (tmp_path / "out").as_uri(), "GENFARM_DEVICE": "cpu",
           "GENFARM_DATA_DIR": str(tmp_path / "data"), "GENFARM_MODEL_PROFILE": "tiny",
           "GENFARM_UNIT_SIZE": "8"}
    upgrade(pg_url)
    db = Db(pg_url)
    workers.start(env, "--concurrency", "auto", "--max-batch", "4")
    batch = submit(env, tmp_path, {"kind": "generate", "seed": {"range": [0, 64]}, "width": 48,
                                   "height": 48})
    db.wait(batch, workers)
    assert db.counts(batch) == {"succeeded": 64}
    logs = workers.logs(tail=None)
    cores = cpu_cores()
    assert f"worker processes: {cores}, torch CPU threads: 1 each" in logs, logs[-3000:]
    computing = dict(re.findall(r"process (\d+) computes on cpu, torch CPU threads: (\d+)",
                                logs))
    assert len(computing) == cores and set(computing.values()) == {"1"}, computing
    engine = make_engine(pg_url)
    with session_factory(engine)() as s:  # measured for one-thread processes, named so
        assert s.scalars(select(PassSize.key)).all() == ["generate:aether:48x48|cpu:1-thread|float64"]
    engine.dispose()
    db.close()
