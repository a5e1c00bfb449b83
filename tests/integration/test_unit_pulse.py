"""A work unit's pulse row lives exactly as long as the unit, on SQLite and PostgreSQL: its last
record ends it in the same transaction, and a unit whose last outcome was not a finished pass
(a poison job recorded as it failed) ends it on its own. A pulse left behind would make the
reconciler take a finished unit for a silent one."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select, update

from jobs import lifecycle
from jobs.db import upgrade
from jobs.manifest import parse_manifest
from jobs.models import Job, UnitPulse, utcnow
from jobs.pulse import expire_silent_units, pulse, pulse_start
from jobs.settings import Settings
from jobs.submit import WorkUnit, submit
from workers.recording import UnitReport
from workers.runner import Runtime


def unit_of(runtime: Runtime, line: dict[str, Any], unit_size: int = 64) -> WorkUnit:
    units: list[WorkUnit] = []
    submit(runtime.sessions, "acme", parse_manifest(json.dumps(line)), units.extend,
           unit_size=unit_size)
    assert len(units) == 1
    return units[0]


def statuses(runtime: Runtime) -> dict[str, int]:
    with runtime.sessions() as s:
        return dict(s.execute(select(Job.status, func.count()).group_by(Job.status)).all())


def pulses(runtime: Runtime) -> int:
    with runtime.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(UnitPulse)) or 0)


@pytest.mark.parametrize("jobs", [1, 40, 64])
def test_a_units_last_record_ends_its_pulse(runtime: Runtime, jobs: int) -> None:
    unit = unit_of(runtime, {"kind": "noop", "tag": {"range": [0, jobs]}})
    report = runtime.run_unit(unit.job_ids, unit.queue)
    assert report.succeeded == jobs
    assert statuses(runtime) == {"succeeded": jobs}
    assert pulses(runtime) == 0


def test_a_unit_whose_last_outcome_was_a_failure_ends_its_pulse_too(runtime: Runtime) -> None:
    unit = unit_of(runtime, {"kind": "noop", "fail": "always", "max_attempts": 1})
    report = runtime.run_unit(unit.job_ids, unit.queue)
    assert report.failed == 1 and statuses(runtime) == {"failed": 1}
    assert pulses(runtime) == 0


@pytest.mark.parametrize("jobs", [1, 40, 64])
def test_a_unit_takes_three_transactions(runtime: Runtime, jobs: int) -> None:
    """Its claim, one record of all its passes (which ends its pulse: a full unit's record too,
    not a transaction of its own after it), and one asking whether its batches are done and
    whether jobs waited on it. Each is a round trip and a commit an idle worker's job waits for."""
    unit = unit_of(runtime, {"kind": "noop", "tag": {"range": [0, jobs]}})
    commits: list[Any] = []

    def committed(conn: Any) -> None:
        commits.append(conn)

    event.listen(runtime.engine, "commit", committed)
    try:
        report = runtime.run_unit(unit.job_ids, unit.queue)
    finally:
        event.remove(runtime.engine, "commit", committed)
    assert report.succeeded == jobs and pulses(runtime) == 0
    assert report.batches_finished  # and its batch, closed: one more, once per batch
    assert len(commits) == 3 + 1, report.ms


def beat_meets(runtime: Runtime, owner: str, job_ids: list[str], lease_s: float,
               other: Callable[[], Any]) -> list[BaseException]:
    """A heartbeat of ``owner``'s unit, between its two writes (the pulse row written, the jobs'
    leases not yet), while ``other`` runs in a thread and waits on one of its rows; then the
    beat extends the leases and commits. Returns what ``other`` raised."""
    beat = runtime.sessions()
    beat.begin()
    assert pulse(beat, owner) == 1
    errors: list[BaseException] = []

    def run() -> None:
        try:
            other()
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.5)  # ``other`` is waiting on one of the beat's rows by now
    try:
        assert lifecycle.heartbeat(beat, owner, job_ids, lease_s) == 4
        beat.commit()
    finally:
        beat.close()
        thread.join(timeout=30)
    return errors


def test_a_units_last_record_and_a_heartbeat_at_the_same_moment_both_commit(
        runtime: Runtime) -> None:
    """A heartbeat takes the unit's pulse row, then its jobs (a lease extension); the unit's last
    record ends the pulse and records its jobs. Taken in the other order they deadlock, and the
    database ends one: the unit's outcomes, or its beat."""
    unit = unit_of(runtime, {"kind": "noop", "tag": {"range": [0, 4]}})
    owner = "worker:unit"
    with runtime.sessions.begin() as s:
        assert len(lifecycle.claim(s, unit.job_ids, owner, 60)) == 4
        pulse_start(s, owner)
    errors = beat_meets(runtime, owner, unit.job_ids, 60, lambda: runtime.recorder.record(
        owner, [lifecycle.JobResult(j) for j in unit.job_ids], UnitReport(), end_pulse=True))
    assert not errors, errors
    assert statuses(runtime) == {"succeeded": 4} and pulses(runtime) == 0


def test_a_silent_units_expiry_and_its_late_heartbeat_at_the_same_moment_both_commit(
        runtime: Runtime) -> None:
    """The reconciler ends the leases of a unit silent past its grace, while that unit's late
    heartbeat takes its pulse row and then its jobs. Taken in the same order, the unit has
    pulsed by the time the reconciler gets its row: it keeps its pulse and its jobs."""
    unit = unit_of(runtime, {"kind": "noop", "tag": {"range": [0, 4]}})
    owner = "worker:slow"
    long_ago = utcnow() - timedelta(seconds=60)
    with runtime.sessions.begin() as s:
        assert len(lifecycle.claim(s, unit.job_ids, owner, 120, now=long_ago)) == 4
        pulse_start(s, owner, long_ago)
    ended: list[int] = []

    def reconcile() -> None:
        with runtime.sessions.begin() as s:
            ended.append(expire_silent_units(s, 8.0))

    errors = beat_meets(runtime, owner, unit.job_ids, 120, reconcile)
    assert not errors, errors
    assert ended == [0] and statuses(runtime) == {"running": 4} and pulses(runtime) == 1


def test_a_unit_given_up_for_lost_stops_and_writes_nothing_more(db_url: str,
                                                               tmp_path: Path) -> None:
    """A unit silent past its grace (a stall, a partition) is given up for lost while it still
    runs: its jobs go back to the queue, and reruns store their outputs at the same keys. Its
    next pulse finds its row gone: it stops before its next pass, and none of its uploads start
    after that (one storing then finishes)."""
    rt = Runtime(Settings(database_url=db_url, data_dir=tmp_path / "data", upload_threads=1,
                          storage_url=(tmp_path / "out").as_uri(), batch_wait_seconds=0,
                          pulse_seconds=0.1))
    out = tmp_path / "out"
    unit = unit_of(rt, {"kind": "noop", "tag": {"range": [0, 512]},
                        "payload_bytes": 1_048_576}, unit_size=512)
    given_up: list[float] = []

    def reconciler() -> None:  # the first output stored: the unit is given up for lost
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(out.rglob("payload.bin")):
            time.sleep(0.001)
        with rt.sessions.begin() as s:  # as if it had been silent for a minute
            s.execute(update(UnitPulse).values(seen_at=utcnow() - timedelta(seconds=60)))
            assert expire_silent_units(s, 8.0) > 0
            lifecycle.expire_leases(s)
        given_up.append(time.time())

    thread = threading.Thread(target=reconciler)
    try:
        thread.start()
        report = rt.run_unit(unit.job_ids, unit.queue)
        thread.join(timeout=60)
        rt.outputs.close()  # any upload of it still to come would be written by now
        written = sorted(p.stat().st_mtime for p in out.rglob("payload.bin"))
    finally:
        rt.close()
    assert given_up and pulses(rt) == 0
    # what it recorded before (a record every 64 jobs) stays; the rest went back
    assert statuses(rt) == {k: n for k, n in (("succeeded", report.succeeded),
                                              ("queued", 512 - report.succeeded)) if n}
    assert report.succeeded < 512
    late = [t for t in written if t > given_up[0] + 1.0]  # its pulse comes every 0.1 s
    assert not late and len(written) < 512, (len(late), len(written))


def test_a_unit_pulses_at_least_twice_within_its_grace() -> None:
    """One late beat must not lose a unit, nor hold up its uploads (which start only within half
    the grace of a pulse): a grace of two pulses or less is refused, naming both settings."""
    with pytest.raises(ValueError, match="GENFARM_PULSE_GRACE_SECONDS .4. must be more than "
                       "twice GENFARM_PULSE_SECONDS .2."):
        Settings(pulse_seconds=2, pulse_grace_seconds=4, _env_file=None)
    assert Settings(pulse_seconds=2, pulse_grace_seconds=4.5, _env_file=None)


def test_a_unit_cut_off_from_the_database_stops_writing_before_it_can_be_given_up(
        pg_url: str, s3_bucket: str, tmp_path: Path) -> None:
    """A worker cut off from the database (here: another transaction holds its unit's pulse row,
    so its heartbeat waits) while it still reaches the bucket: its uploads stop within half the
    grace of its last pulse, before anyone could give it up for lost. Given up, it stops, and
    none of the uploads that waited ever starts. (It used to go on storing for as long as it was
    cut off, over the objects that the reruns of its jobs stored and recorded.)"""
    import boto3

    upgrade(pg_url)
    rt = Runtime(Settings(database_url=pg_url, data_dir=tmp_path / "data", upload_threads=1,
                          storage_url=f"s3://{s3_bucket}/farm", batch_wait_seconds=0,
                          pulse_seconds=0.2, pulse_grace_seconds=2.0))
    s3 = boto3.client("s3")

    def objects() -> int:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket, Prefix="farm/")
        return sum(len(page.get("Contents", [])) for page in pages)

    unit = unit_of(rt, {"kind": "noop", "tag": {"range": [0, 1024]}, "payload_bytes": 65_536},
                   unit_size=1024)
    seen: dict[str, int] = {}

    def cut_off() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not objects():
            time.sleep(0.01)
        with rt.sessions.begin() as s:  # the pulse row held: the unit's heartbeat waits
            s.execute(select(UnitPulse.owner).with_for_update())
            cut = time.monotonic()
            time.sleep(rt.outputs.fresh_s + 0.7 - (time.monotonic() - cut))
            seen["settled"] = objects()  # half the grace, and an upload's time, since its pulse
            time.sleep(max(0.0, cut + 3.0 - time.monotonic()))
            seen["given up"] = objects()  # as a reconciler does after the grace
            assert expire_silent_units(s, rt.settings.pulse_grace_seconds) > 0
            lifecycle.expire_leases(s)

    thread = threading.Thread(target=cut_off)
    try:
        thread.start()
        report = rt.run_unit(unit.job_ids, unit.queue)
        thread.join(timeout=60)
        rt.outputs.close()  # any upload of it still to come would be written by now
        seen["after"] = objects()
    finally:
        rt.close()
    assert 0 < seen["settled"] == seen["given up"] == seen["after"] < 1024, seen
    assert pulses(rt) == 0 and report.succeeded <= seen["after"]
    assert statuses(rt) == {k: n for k, n in (("succeeded", report.succeeded),
                                              ("queued", 1024 - report.succeeded)) if n}


def test_a_process_sets_its_model_up_before_it_claims_its_first_jobs(sqlite_url: str,
                                                                       tmp_path: Path) -> None:
    """Setting a model up (torch and the weights loaded: seconds, much of it holding the GIL,
    which the heartbeat then waits for) happens before the first claim, so no lease runs out
    and no pulse falls silent meanwhile. (Claimed first, a process's first unit of 64 jobs on
    4-second leases lost them all to the reconciler before its first pass.)"""
    upgrade(sqlite_url)
    rt = Runtime(Settings(database_url=sqlite_url, data_dir=tmp_path / "data",
                          storage_url=(tmp_path / "out").as_uri(), batch_wait_seconds=0,
                          model_profile="tiny", _env_file=None))
    unit = unit_of(rt, {"kind": "generate", "seed": {"range": [0, 2]}, "width": 64,
                        "height": 64})
    at_claim: list[set[str]] = []

    @event.listens_for(rt.engine, "before_cursor_execute")
    def claim(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if not at_claim and statement.lstrip().startswith("UPDATE jobs"):
            at_claim.append(set(rt.families))

    try:
        assert not rt.families
        report = rt.run_unit(unit.job_ids, unit.queue)
    finally:
        rt.close()
    assert report.succeeded == 2 and at_claim == [{"aether"}]


def test_a_units_writes_wait_for_a_recent_pulse_and_none_starts_once_it_ended(
        tmp_path: Path) -> None:
    """Outputs and a family's chunks alike (a video stores its chunks during the pass): a write
    waits while the unit's pulse is older than half the grace, goes ahead once one is confirmed,
    and is refused once the unit ended early; a pass handed over after that (its unit learned
    it was lost between two looks) is written never, and waits for nothing."""
    from jobs.lifecycle import ClaimedJob
    from storage import open_storage
    from workers.family import Artifact, JobContext, Retry, constant
    from workers.outputs import InFlight, OutputWriter

    storage = open_storage((tmp_path / "out").as_uri())
    writer = OutputWriter(storage, 1, fresh_s=0.3)
    ctx = JobContext("j1", "b1", "acme", 1, "video", {}, storage, _may_write=writer.may_write)
    refused: list[Exception] = []

    def store(name: str, done: threading.Event) -> None:
        try:
            ctx.store_chunk(name, b"x")
        except Retry as exc:
            refused.append(exc)
        done.set()

    try:
        writer.open(time.monotonic())
        ctx.store_chunk("00000.npy", b"a")  # a recent pulse: written at once
        time.sleep(0.4)
        second = threading.Event()
        threading.Thread(target=store, args=("00001.npy", second)).start()
        assert not second.wait(0.3)  # the pulse is old: it waits
        writer.confirm(time.monotonic())
        assert second.wait(5) and ctx.chunks() == ["00000.npy", "00001.npy"]
        time.sleep(0.4)
        third = threading.Event()
        threading.Thread(target=store, args=("00002.npy", third)).start()
        assert not third.wait(0.2)
        writer.settle()  # the unit learned it was given up for lost
        assert third.wait(5) and len(refused) == 1 and ctx.chunks() == ["00000.npy", "00001.npy"]
        with pytest.raises(Retry):
            ctx.store_chunk("00003.npy", b"d")
        job = ClaimedJob("j2", "b1", "noop", {}, "noop:noop", 1, 3)
        flight = InFlight([job], 0.0, False)
        writer.submit(flight, [("acme", job, [Artifact("payload.bin", "application/octet-stream",
                                                       constant(b"p"))])])
        assert flight.made() == [None] and not any((tmp_path / "out").rglob("payload.bin"))
    finally:
        writer.close()
