"""Many worker processes racing for the same jobs on PostgreSQL: every job is claimed exactly once."""

import json
import multiprocessing as mp
import random
from collections import Counter

from sqlalchemy import func, select

from jobs.db import make_engine, session_factory, upgrade
from jobs.manifest import parse_manifest
from jobs.models import Job, JobEvent
from jobs.submit import submit

PROCESSES = 6
JOBS = 600


def racer(url: str, ids: list[str], name: str, start, out) -> None:  # type: ignore[no-untyped-def]
    from jobs import lifecycle

    engine = make_engine(url)
    sessions = session_factory(engine)
    rng = random.Random(name)
    order = ids[:]
    rng.shuffle(order)
    won: list[str] = []
    start.wait()
    for i in range(0, len(order), 37):
        with sessions.begin() as s:
            won += [c.id for c in lifecycle.claim(s, order[i : i + 37], name, 60)]
        with sessions.begin() as s:  # and fill, which races through SKIP LOCKED
            won += [c.id for c in lifecycle.fill(s, "noop", 5, name, 60)]
    engine.dispose()
    out.put((name, won))


def test_racing_processes_never_claim_a_job_twice(pg_url: str) -> None:
    upgrade(pg_url)
    engine = make_engine(pg_url)
    sessions = session_factory(engine)
    units = []
    submit(sessions, "race", parse_manifest(json.dumps({"kind": "noop", "tag": {"range": [0, JOBS]}})),
           units.extend, unit_size=JOBS)
    ids = units[0].job_ids
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=racer, args=(pg_url, ids, f"w{i}", start, out)) for i in range(PROCESSES)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    claims = Counter(j for won in results.values() for j in won)
    assert len(claims) == JOBS and max(claims.values()) == 1
    assert sum(1 for won in results.values() if won) > 1, "the race had a single winner: not a race"
    with sessions() as s:
        assert s.scalar(select(func.count()).where(Job.status == "running")) == JOBS
        owners = dict(s.execute(select(Job.id, Job.lease_owner)).all())
        assert all(owners[j] == name for name, won in results.items() for j in won)
        assert s.scalar(select(func.count()).select_from(JobEvent)) == JOBS
        assert set(s.scalars(select(Job.attempt))) == {1}
    engine.dispose()
