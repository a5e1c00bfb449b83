"""Many worker processes racing for the same jobs on PostgreSQL: every job is claimed exactly
once, by ids, by key (fill) and by queue (claim_next, one statement a key), and a claim whose
best key is held by another claim in flight takes the next key's jobs instead of none."""

import json
import multiprocessing as mp
import random
from collections import Counter

from sqlalchemy import func, select, update

from jobs.db import make_engine, session_factory, upgrade
from jobs.manifest import parse_manifest
from jobs.models import Job, JobEvent
from jobs.submit import submit

PROCESSES = 6
JOBS = 600


def racer(url: str, ids: list[str], queue: str, key: str, name: str, start, out) -> None:  # type: ignore[no-untyped-def]
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
            won += [c.id for c in lifecycle.fill(s, key, 5, name, 60)]
        with sessions.begin() as s:  # and by queue: find the key, pick and move in one statement
            won += [c.id for c in lifecycle.claim_next(s, queue, 7, name, 60)]
    engine.dispose()
    out.put((name, won))


def test_racing_processes_never_claim_a_job_twice(pg_url: str) -> None:
    upgrade(pg_url)
    engine = make_engine(pg_url)
    sessions = session_factory(engine)
    units = []
    submit(sessions, "race", parse_manifest(json.dumps({"kind": "noop", "tag": {"range": [0, JOBS]}})),
           units.extend, unit_size=JOBS)
    ids, queue = units[0].job_ids, units[0].queue
    with sessions() as s:
        key = s.scalar(select(Job.batch_key).limit(1))
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=racer, args=(pg_url, ids, queue, key, f"w{i}",
                                                       start, out)) for i in range(PROCESSES)]
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


def test_a_claim_whose_best_key_is_held_in_flight_takes_the_next_key(pg_url: str) -> None:
    from jobs import lifecycle

    upgrade(pg_url)
    engine = make_engine(pg_url)
    sessions = session_factory(engine)
    units = []
    submit(sessions, "race", parse_manifest(json.dumps({"kind": "noop", "tag": {"range": [0, 40]}})),
           units.extend, unit_size=40)
    queue = units[0].queue
    with sessions.begin() as s:  # the later half is another key (ranked after the first)
        key = s.scalar(select(Job.batch_key).limit(1))
        s.execute(update(Job).where(Job.index >= 20).values(batch_key="noop-b"))
    first = sessions()
    try:
        held = lifecycle.fill(first, key, 100, "w-first", 60)  # its row locks, uncommitted
        assert len(held) == 20
        with sessions.begin() as s:
            second = lifecycle.claim_next(s, queue, 8, "w-second", 60)
        assert len(second) == 8 and {c.batch_key for c in second} == {"noop-b"}
        first.commit()
    finally:
        first.close()
    with sessions.begin() as s:
        rest = lifecycle.claim_next(s, queue, 100, "w-third", 60)
    assert len(rest) == 12 and {c.batch_key for c in rest} == {"noop-b"}
    claims = Counter(c.id for c in [*held, *second, *rest])
    assert len(claims) == 40 and max(claims.values()) == 1
    engine.dispose()
