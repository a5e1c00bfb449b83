"""A pass's outputs go to the upload threads in groups sized by what a job's upload takes: small
local writes in a few hand-overs, slow ones (images to encode, objects for a bucket) one job
each. Either way one job's failing upload fails that job alone."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select

from jobs.lifecycle import ClaimedJob
from jobs.manifest import parse_manifest
from jobs.models import Job, Output
from jobs.submit import WorkUnit, submit
from workers.outputs import UPLOAD_TASK_S, InFlight, OutputWriter
from workers.runner import Runtime


def unit_of(runtime: Runtime, jobs: int, **params: Any) -> WorkUnit:
    units: list[WorkUnit] = []
    submit(runtime.sessions, "acme", parse_manifest(json.dumps(
        {"kind": "noop", "tag": {"range": [0, jobs]}, "max_attempts": 1, **params})),
        units.extend, unit_size=64)
    assert len(units) == 1
    return units[0]


def test_groups_follow_the_measured_cost_of_a_jobs_upload(runtime: Runtime) -> None:
    unit = unit_of(runtime, 16)
    runtime.run_unit(unit.job_ids, unit.queue)  # measures what a job's upload takes here
    assert runtime.outputs.per_job_s > 0
    with runtime.sessions() as s:
        jobs = [ClaimedJob(j.id, j.batch_id, j.kind, j.params, j.batch_key, 1, 1)
                for j in s.scalars(select(Job))]
    pass_of_16: list[tuple[str, ClaimedJob, Any]] = [("acme", j, []) for j in jobs]
    outputs = runtime.outputs

    def handovers() -> int:
        flight = InFlight(jobs, 0.0, False)
        outputs.submit(flight, pass_of_16)
        assert len(flight.made()) == 16
        return len(flight.groups)

    outputs.per_job_s = UPLOAD_TASK_S / 100  # a small file to a folder: one hand-over
    assert handovers() == 1
    outputs.per_job_s = UPLOAD_TASK_S / 4  # four jobs a hand-over
    assert handovers() == 4
    outputs.per_job_s = UPLOAD_TASK_S * 10  # an image to encode: one job each, in parallel
    assert handovers() == 16


@pytest.mark.parametrize("measured", [UPLOAD_TASK_S / 100, UPLOAD_TASK_S * 10])
def test_one_failing_upload_fails_its_job_alone(runtime: Runtime, tmp_path: Path,
                                                measured: float) -> None:
    unit = unit_of(runtime, 40)
    runtime.outputs.per_job_s = measured  # groups of up to 16 jobs (a pass), or of one
    with runtime.sessions() as s:
        batch_id = s.scalar(select(Job.batch_id).where(Job.id == unit.job_ids[5]))
    # a file where job 5's folder goes: its output cannot be written
    blocked = tmp_path / "out" / "acme" / str(batch_id) / unit.job_ids[5]
    blocked.parent.mkdir(parents=True)
    blocked.write_bytes(b"")
    report = runtime.run_unit(unit.job_ids, unit.queue)
    assert (report.succeeded, report.failed) == (39, 1)
    with runtime.sessions() as s:
        failed = s.execute(select(Job.id, Job.error).where(Job.status == "failed")).all()
    assert [f.id for f in failed] == [unit.job_ids[5]] and "Error" in (failed[0].error or "")


def test_a_time_limit_among_uploads_leaves_no_write_behind(runtime: Runtime,
                                                          tmp_path: Path) -> None:
    """The unit's time limit (Celery's soft limit: an exception raised in the worker's main
    thread, wherever it is) arrives while a pass's outputs are being stored. The jobs whose
    uploads had started keep their outputs and succeed; the others go back (here, with one
    attempt, they fail) with nothing of theirs written, then or later: a write landing after the
    job went back would overwrite what a rerun stored and recorded."""
    unit = unit_of(runtime, 64, payload_bytes=1_048_576)
    out = tmp_path / "out"
    runtime.outputs.close()  # one upload thread, so that a pass's uploads take a while
    runtime.outputs = OutputWriter(runtime.storage, 1, runtime.outputs.fresh_s)

    def limit(*_: Any) -> None:
        raise SoftTimeLimitExceeded()

    stop = threading.Event()

    def at_first_output() -> None:  # the first output stored: the others are in flight
        while not stop.is_set():
            if any(p.is_file() and not p.name.startswith(".tmp-") for p in out.rglob("*")):
                os.kill(os.getpid(), signal.SIGUSR1)
                return
            time.sleep(0.0005)

    previous = signal.signal(signal.SIGUSR1, limit)
    watcher = threading.Thread(target=at_first_output)
    try:
        watcher.start()
        report = runtime.run_unit(unit.job_ids, unit.queue)
    finally:
        stop.set()
        watcher.join()
        signal.signal(signal.SIGUSR1, previous)
    stored_then = stored(out)
    runtime.outputs.close()  # had any upload been left running, it would have finished now
    assert stored(out) == stored_then
    with runtime.sessions() as s:
        jobs = {j.id: j for j in s.scalars(select(Job))}
        recorded = {o.key: o.sha256 for o in s.scalars(select(Output))}
    succeeded = {i for i, j in jobs.items() if j.status == "succeeded"}
    failed = {i for i, j in jobs.items() if j.status == "failed"}
    assert report.succeeded == len(succeeded) >= 1 and len(failed) >= 16, report
    assert succeeded | failed == set(jobs)
    assert {jobs[i].error for i in failed} == {"unit time limit exceeded"}
    # every job's object stored is a succeeded job's output, as recorded; a failed job has none
    outputs = {k: v for k, v in stored_then.items() if k.split("/")[-2] in jobs}
    assert outputs == recorded
    assert {key.split("/")[-2] for key in outputs} == succeeded


def stored(root: Path) -> dict[str, str]:
    """The objects under a local storage's ``root``: key -> sha256."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file() and not p.name.startswith(".tmp-")}
