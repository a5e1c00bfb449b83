"""Claim order across batches on SQLite and PostgreSQL: the best-ranked job of a queue is
claimed first whichever message asks, aging lifts a waiting job over newer ones, paused jobs
are never claimed and resume in their old place, and a message whose own jobs are gone runs
others instead of nothing."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from jobs import lifecycle
from jobs.batches import finalize_if_done, summarize
from jobs.db import make_engine, session_factory
from jobs.manifest import parse_manifest
from jobs.models import Batch, Job
from jobs.submit import WorkUnit, pause_jobs, resume_jobs, submit
from storage import open_storage

LEASE = 60.0


@pytest.fixture
def sessions(db_url: str):  # type: ignore[no-untyped-def]
    engine = make_engine(db_url)
    yield session_factory(engine)
    engine.dispose()


def batch(sessions: Any, n: int, priority: int = 0, aging_s: float = 30.0,
          size: int = 64) -> tuple[str, list[WorkUnit]]:
    specs = parse_manifest(json.dumps({"kind": "noop", "tag": {"range": [0, n]},
                                       "payload_bytes": size, "priority": priority}))
    units: list[WorkUnit] = []
    result = submit(sessions, "acme", specs, units.extend, unit_size=64, aging_s=aging_s)
    return result.batch_id, units


def claim_unit(sessions: Any, unit: WorkUnit, owner: str = "w:1") -> list[lifecycle.ClaimedJob]:
    with sessions.begin() as session:
        return lifecycle.claim_next(session, unit.queue, len(unit.job_ids), owner, LEASE)


def test_a_higher_priority_batch_is_claimed_by_the_next_message_whoever_sent_it(
        sessions: Any) -> None:
    low, low_units = batch(sessions, 640, priority=-100)
    high, high_units = batch(sessions, 10, priority=500)
    # the broker hands out the low batch's messages first (FIFO); the first of them runs the
    # high batch, because a message stands for a unit of work on its queue: all ten first,
    # the rest of the unit (the same batch key: one forward pass) from the low batch
    first = claim_unit(sessions, low_units[0])
    assert Counter(j.batch_id for j in first) == {high: 10, low: 54}
    second = claim_unit(sessions, low_units[1])
    assert {j.batch_id for j in second} == {low} and len(second) == 64
    # every message still finds work until every job is claimed: none is stranded
    claimed = len(first) + len(second)
    for unit in [*low_units[2:], *high_units]:
        claimed += len(claim_unit(sessions, unit))
    assert claimed == 650
    with sessions() as s:
        assert s.scalar(select(Job.id).where(Job.status == "queued")) is None


def test_equal_priorities_run_in_submission_order(sessions: Any) -> None:
    first, _ = batch(sessions, 3)
    second, units = batch(sessions, 3)
    claimed = claim_unit(sessions, units[0])  # the second batch's message
    assert [j.batch_id for j in claimed] == [first] * 3


def test_aging_lifts_a_job_that_waited_over_newer_higher_ones(sessions: Any) -> None:
    """One point per aging step: a job at -100 that waited 601 steps beats a new one at 500."""
    old, old_units = batch(sessions, 2, priority=-100, aging_s=1.0)
    with sessions.begin() as s:  # it was submitted 601 s ago
        s.execute(update(Job).where(Job.batch_id == old).values(rank=Job.rank - 601))
    new, _ = batch(sessions, 2, priority=500, aging_s=1.0)
    assert {j.batch_id for j in claim_unit(sessions, old_units[0])} == {old}
    with sessions.begin() as s:  # ... and after only 599 s it still waits
        s.execute(update(Job).where(Job.batch_id == new).values(status="queued"))
    later, later_units = batch(sessions, 2, priority=-100, aging_s=1.0)
    with sessions.begin() as s:
        s.execute(update(Job).where(Job.batch_id == later).values(rank=Job.rank - 599))
    assert {j.batch_id for j in claim_unit(sessions, later_units[0])} == {new}


def test_a_message_whose_jobs_were_cancelled_runs_the_next_batch(sessions: Any) -> None:
    big, big_units = batch(sessions, 3000)
    with sessions.begin() as s:
        assert lifecycle.cancel(s, Job.batch_id == big) == 3000
    small, _ = batch(sessions, 5)
    # the first of the cancelled batch's 47 messages takes the new batch's jobs at once
    assert {j.batch_id for j in claim_unit(sessions, big_units[0])} == {small}
    # and every other costs one empty claim: no pass, nothing else
    assert all(claim_unit(sessions, unit) == [] for unit in big_units[1:])


def test_paused_jobs_are_not_claimed_and_resume_in_their_old_place(sessions: Any,
                                                                   tmp_path: Path) -> None:
    store = open_storage(tmp_path.as_uri())
    paused, units = batch(sessions, 4, priority=10)
    other, other_units = batch(sessions, 4)
    with sessions.begin() as s:  # one job of the batch is running when it is paused
        [running] = lifecycle.claim(s, units[0].job_ids[:1], "w:0", LEASE)
    assert pause_jobs(sessions, Job.batch_id == paused) == 3
    with sessions() as s:
        assert summarize(s, s.get(Batch, paused)).counts == {"paused": 3, "running": 1}
    assert {j.batch_id for j in claim_unit(sessions, units[0])} == {other}
    assert claim_unit(sessions, other_units[0]) == []  # nothing queued: paused jobs wait
    with sessions.begin() as s:  # the running job finishes; the batch is not done
        lifecycle.record(s, "w:0", [lifecycle.JobResult(running.id, outputs=[])])
    assert finalize_if_done(sessions, store, paused) is None
    with sessions() as s:
        assert summarize(s, s.get(Batch, paused)).status == "paused"
    published: list[WorkUnit] = []
    assert resume_jobs(sessions, published.extend, Job.batch_id == paused, unit_size=64) == 3
    assert sum(len(u.job_ids) for u in published) == 3
    assert len(claim_unit(sessions, published[0])) == 3
    with sessions() as s:
        events = s.execute(select(Job.status).where(Job.batch_id == paused)).scalars().all()
    assert sorted(events) == ["running"] * 3 + ["succeeded"]


def test_cancel_takes_paused_jobs_too(sessions: Any, tmp_path: Path) -> None:
    store = open_storage(tmp_path.as_uri())
    paused, _ = batch(sessions, 3)
    pause_jobs(sessions, Job.batch_id == paused)
    with sessions.begin() as s:
        assert lifecycle.cancel(s, Job.batch_id == paused) == 3
    assert finalize_if_done(sessions, store, paused) == "cancelled"


def test_every_message_takes_its_whole_worth_across_batch_keys(sessions: Any) -> None:
    """Messages of a queue add up to its jobs: one that finds its best key short takes the
    next key's jobs too, so no job waits for a republish, whatever order messages come in."""
    specs = parse_manifest("\n".join(json.dumps(line) for line in [
        {"kind": "noop", "tag": {"range": [0, 100]}},
        {"kind": "generate", "seed": {"range": [0, 28]}, "width": 64, "height": 64},
        {"kind": "generate", "seed": {"range": [0, 40]}, "width": 32, "height": 32}]))
    units: list[WorkUnit] = []
    submit(sessions, "acme", specs, units.extend, unit_size=64)
    generate = sorted((u for u in units if u.queue == "aether"), key=lambda u: len(u.job_ids))
    assert [len(u.job_ids) for u in generate] == [28, 40]
    # the 40-job message comes first: the best key (64x64) has only 28, so it takes 12 of
    # the next; the 28-job message then takes the last 28
    taken = [claim_unit(sessions, unit) for unit in reversed(generate)]
    assert [len(t) for t in taken] == [40, 28]
    assert Counter(j.batch_key for j in taken[0]) == {"generate:aether:64x64": 28,
                                                      "generate:aether:32x32": 12}
    assert Counter(j.batch_key for j in taken[1]) == {"generate:aether:32x32": 28}
    noop = [u for u in units if u.queue == "noop"]
    assert sum(len(claim_unit(sessions, u)) for u in reversed(noop)) == 100
    with sessions() as s:
        assert s.scalar(select(Job.id).where(Job.status == "queued")) is None
