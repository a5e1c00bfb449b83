"""The state machine on SQLite and PostgreSQL: conditional transitions, events, terminal states."""

from datetime import timedelta

import pytest
from sqlalchemy import select

from jobs import lifecycle
from jobs.db import make_engine, session_factory
from jobs.lifecycle import JobResult, OutputRecord
from jobs.manifest import parse_manifest
from jobs.models import Job, JobEvent, Output, utcnow
from jobs.pulse import expire_silent_units, pulse, pulse_end, pulse_start
from jobs.submit import submit


@pytest.fixture
def sessions(db_url: str):  # type: ignore[no-untyped-def]
    engine = make_engine(db_url)
    yield session_factory(engine)
    engine.dispose()


def make_batch(sessions, n: int = 4, **extra) -> list[str]:  # type: ignore[no-untyped-def]
    line = {"kind": "noop", "tag": {"range": [0, n]}, **extra}
    import json

    specs = parse_manifest(json.dumps(line))
    published = []
    result = submit(sessions, "acme", specs, published.extend, unit_size=64)
    assert result.published and len(published) == 1
    return published[0].job_ids


def statuses(sessions) -> dict[str, str]:  # type: ignore[no-untyped-def]
    with sessions() as s:
        return dict(s.execute(select(Job.id, Job.status)).all())


def test_claim_is_conditional_and_logged(sessions) -> None:  # type: ignore[no-untyped-def]
    ids = make_batch(sessions)
    with sessions.begin() as s:
        first = lifecycle.claim(s, ids[:3], "w1", 60)
    with sessions.begin() as s:
        second = lifecycle.claim(s, ids, "w2", 60)  # a redelivered message
    assert {c.id for c in first} == set(ids[:3]) and {c.id for c in second} == {ids[3]}
    assert all(c.attempt == 1 for c in first + second)
    with sessions() as s:
        events = s.execute(select(JobEvent.job_id, JobEvent.from_status, JobEvent.to_status,
                                  JobEvent.worker)).all()
    assert sorted(e.job_id for e in events) == sorted(ids)
    assert {(e.from_status, e.to_status) for e in events} == {("queued", "running")}


def test_record_is_guarded_by_the_lease_owner(sessions) -> None:  # type: ignore[no-untyped-def]
    ids = make_batch(sessions, 2)
    with sessions.begin() as s:
        lifecycle.claim(s, ids, "w1", 60)
    out = OutputRecord("x.bin", "k", "0" * 64, 1, "application/octet-stream")
    with sessions.begin() as s:  # someone who does not hold the lease writes nothing
        assert lifecycle.record(s, "intruder", [JobResult(ids[0], [out])]) == (set(), set(), set())
    with sessions.begin() as s:
        ok, failed, requeued = lifecycle.record(
            s, "w1", [JobResult(ids[0], [out], 0.5), JobResult(ids[1], error="bad params")])
    assert (ok, failed, requeued) == ({ids[0]}, {ids[1]}, set())
    with sessions.begin() as s:  # terminal states never change
        assert lifecycle.record(s, "w1", [JobResult(ids[0], [out])])[0] == set()
        assert lifecycle.claim(s, ids, "w2", 60) == []
        assert lifecycle.cancel(s, Job.id.in_(ids)) == 0
    with sessions() as s:
        assert s.scalars(select(Output.job_id)).all() == [ids[0]]
        job = s.get(Job, ids[0])
        assert job.device_seconds == 0.5 and job.lease_owner is None
        assert s.get(Job, ids[1]).error == "bad params"
    assert statuses(sessions) == {ids[0]: "succeeded", ids[1]: "failed"}


def test_retryable_errors_requeue_with_backoff_until_attempts_run_out(sessions) -> None:  # type: ignore[no-untyped-def]
    [job_id] = make_batch(sessions, 1, max_attempts=2)
    with sessions.begin() as s:
        lifecycle.claim(s, [job_id], "w1", 60)
        assert lifecycle.record(s, "w1", [JobResult(job_id, error="timeout", retryable=True)])[2] == {job_id}
    with sessions.begin() as s:
        job = s.get(Job, job_id)
        assert job.status == "queued" and job.not_before is not None
        # not due yet: a claim skips it
        assert lifecycle.claim(s, [job_id], "w2", 60, now=job.not_before - timedelta(seconds=0.01)) == []
        assert len(lifecycle.claim(s, [job_id], "w2", 60, now=job.not_before)) == 1
        assert lifecycle.record(s, "w2", [JobResult(job_id, error="timeout", retryable=True)])[1] == {job_id}
    assert statuses(sessions) == {job_id: "failed"}


def test_expired_leases_go_back_to_the_queue(sessions) -> None:  # type: ignore[no-untyped-def]
    ids = make_batch(sessions, 2, max_attempts=1)
    ids2 = make_batch(sessions, 1)
    with sessions.begin() as s:
        lifecycle.claim(s, ids + ids2, "lost-worker", 1)
    with sessions.begin() as s:
        back, dead = lifecycle.expire_leases(s, now=utcnow() + timedelta(seconds=5))
    assert back == set(ids2) and dead == set(ids)
    with sessions.begin() as s:  # the lost worker's late write is refused
        assert lifecycle.record(s, "lost-worker", [JobResult(ids2[0])])[0] == set()
        assert lifecycle.heartbeat(s, "lost-worker", ids + ids2, 60) == 0


def test_progress_is_recorded_by_the_lease_holder_only(sessions) -> None:  # type: ignore[no-untyped-def]
    [job_id] = make_batch(sessions, 1)
    with sessions.begin() as s:
        lifecycle.claim(s, [job_id], "w1", 60)
        assert lifecycle.set_progress(s, "w1", job_id, 0.4)
        assert not lifecycle.set_progress(s, "intruder", job_id, 0.9)
    with sessions() as s:
        assert s.get(Job, job_id).progress == 0.4
    with sessions.begin() as s:
        lifecycle.record(s, "w1", [JobResult(job_id)])
    with sessions() as s:
        assert s.get(Job, job_id).progress == 1.0


def test_release_refunds_the_attempt(sessions) -> None:  # type: ignore[no-untyped-def]
    ids = make_batch(sessions, 2)
    with sessions.begin() as s:
        lifecycle.claim(s, ids, "w1", 60)
        assert lifecycle.release(s, "w1", ids, "warm shutdown") == set(ids)
    with sessions() as s:
        assert {j.attempt for j in s.scalars(select(Job))} == {0}


def test_fill_takes_queued_jobs_of_the_same_key_across_batches(sessions) -> None:  # type: ignore[no-untyped-def]
    a = make_batch(sessions, 3)
    b = make_batch(sessions, 3)
    with sessions.begin() as s:
        mine = lifecycle.claim(s, a[:1], "w1", 60)
        more = lifecycle.fill(s, mine[0].batch_key, 4, "w1", 60)
    assert len(more) == 4 and set(c.id for c in more) <= set(a[1:] + b)


def test_a_silent_unit_loses_its_jobs_and_a_pulsing_one_keeps_them(sessions) -> None:  # type: ignore[no-untyped-def]
    ids = make_batch(sessions, 6)
    now = utcnow()
    with sessions.begin() as s:  # two units, leases far in the future (120 s)
        lifecycle.claim(s, ids[:3], "host:1:2:lost", 120, now=now - timedelta(seconds=20))
        pulse_start(s, "host:1:2:lost", now - timedelta(seconds=20))
        lifecycle.claim(s, ids[3:], "host:1:3:alive", 120, now=now - timedelta(seconds=20))
        pulse_start(s, "host:1:3:alive", now - timedelta(seconds=20))
    with sessions.begin() as s:  # only one of them keeps saying it is alive
        assert pulse(s, "host:1:3:alive", now - timedelta(seconds=1)) == 1
    with sessions.begin() as s:
        assert expire_silent_units(s, 8.0, now) == 3
        back, dead = lifecycle.expire_leases(s, now)
    assert back == set(ids[:3]) and not dead
    assert [statuses(sessions)[i] for i in ids] == ["queued"] * 3 + ["running"] * 3
    with sessions.begin() as s:  # the lost unit's pulse is gone; a late pulse changes nothing
        assert pulse(s, "host:1:2:lost", now) == 0
        assert expire_silent_units(s, 8.0, now) == 0
        assert lifecycle.record(s, "host:1:2:lost", [JobResult(ids[0])]) == (set(), set(), set())
        pulse_end(s, "host:1:3:alive")
        # a unit that ended but whose jobs are still running (a pulse row lost) keeps its lease
        assert expire_silent_units(s, 8.0, now + timedelta(seconds=60)) == 0


def test_results_of_many_passes_are_recorded_together_each_with_its_own_share(sessions) -> None:  # type: ignore[no-untyped-def]
    """Grouped records span passes of different lengths: one call, each job its pass's share
    of device time and its own outputs, and a job another worker holds is left alone."""
    ids = make_batch(sessions, 7)
    with sessions.begin() as s:
        lifecycle.claim(s, ids[:6], "w1", 60)
        lifecycle.claim(s, ids[6:], "w2", 60)
    shares = [0.125, 0.25, 0.25, 0.5, 1.0, 2.0, 4.0]
    results = [JobResult(j, [OutputRecord("a.bin", f"k/{j}", "0" * 64, i + 1, "x/y")], share)
               for i, (j, share) in enumerate(zip(ids, shares, strict=True))]
    with sessions.begin() as s:
        ok, failed, requeued = lifecycle.record(s, "w1", results)
    assert ok == set(ids[:6]) and not failed and not requeued
    with sessions() as s:
        jobs = {j.id: j for j in s.scalars(select(Job))}
        outputs = dict(s.execute(select(Output.job_id, Output.bytes)).all())
    assert [jobs[j].device_seconds for j in ids[:6]] == shares[:6]
    assert jobs[ids[6]].status == "running" and jobs[ids[6]].device_seconds == 0
    assert outputs == {j: i + 1 for i, j in enumerate(ids[:6])}


def test_a_job_has_a_lease_owner_only_while_it_runs(sessions) -> None:  # type: ignore[no-untyped-def]
    """The owner alone guards a worker's writes to the jobs it holds (records, progress, the
    checks for cancelled jobs), so every move out of running must clear it: checked after each
    transition that leaves running, and a record by a former owner touches nothing."""
    from sqlalchemy import func

    def owners_not_running() -> int:
        with sessions() as s:
            return int(s.scalar(select(func.count()).where(
                Job.lease_owner.is_not(None), Job.status != "running")) or 0)

    ids = make_batch(sessions, 12, max_attempts=2)
    with sessions.begin() as s:
        lifecycle.claim(s, ids, "w1", 60)
    moves = [
        lambda s: lifecycle.record(s, "w1", [JobResult(ids[0])]),  # succeeded
        lambda s: lifecycle.record(s, "w1", [JobResult(ids[1], error="boom")]),  # failed
        lambda s: lifecycle.record(s, "w1", [JobResult(ids[2], error="later", retryable=True)]),
        lambda s: lifecycle.release(s, "w1", [ids[3]], "handed back"),
        lambda s: lifecycle.cancel(s, Job.id == ids[4]),
        lambda s: lifecycle.expire_leases(s, now=utcnow() + timedelta(seconds=61)),
    ]
    for move in moves:
        with sessions.begin() as s:
            move(s)
        assert owners_not_running() == 0
    with sessions.begin() as s:
        lifecycle.claim(s, ids[5:7], "w2", 60, now=utcnow() + timedelta(seconds=120))
        lifecycle.release_owned(s, "w2", "worker lost")
    assert owners_not_running() == 0
    with sessions.begin() as s:  # every job is back in the queue or finished: w1 holds nothing
        assert lifecycle.record(s, "w1", [JobResult(i) for i in ids]) == (set(), set(), set())
    assert statuses(sessions)[ids[0]] == "succeeded" and statuses(sessions)[ids[5]] == "queued"
