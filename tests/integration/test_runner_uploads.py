"""A pass's outputs go to the upload threads in groups sized by what a job's upload takes: small
local writes in a few hand-overs, slow ones (images to encode, objects for a bucket) one job
each. Either way one job's failing upload fails that job alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from jobs.lifecycle import ClaimedJob
from jobs.manifest import parse_manifest
from jobs.models import Job
from jobs.submit import WorkUnit, submit
from workers.runner import UPLOAD_TASK_S, Runtime


def unit_of(runtime: Runtime, jobs: int) -> WorkUnit:
    units: list[WorkUnit] = []
    submit(runtime.sessions, "acme", parse_manifest(json.dumps(
        {"kind": "noop", "tag": {"range": [0, jobs]}, "max_attempts": 1})), units.extend,
        unit_size=64)
    assert len(units) == 1
    return units[0]


def test_groups_follow_the_measured_cost_of_a_jobs_upload(runtime: Runtime) -> None:
    unit = unit_of(runtime, 16)
    runtime.run_unit(unit.job_ids, unit.queue)  # measures what a job's upload takes here
    assert runtime._upload_s > 0
    with runtime.sessions() as s:
        jobs = [ClaimedJob(j.id, j.batch_id, j.kind, j.params, j.batch_key, 1, 1)
                for j in s.scalars(select(Job))]
    pass_of_16: list[tuple[ClaimedJob, Any]] = [(j, []) for j in jobs]
    projects = {j.batch_id: "acme" for j in jobs}
    runtime._upload_s = UPLOAD_TASK_S / 100  # a small file to a folder: one hand-over
    assert len(runtime._submit_uploads(pass_of_16, projects)) == 1
    runtime._upload_s = UPLOAD_TASK_S / 4  # four jobs a hand-over
    assert len(runtime._submit_uploads(pass_of_16, projects)) == 4
    runtime._upload_s = UPLOAD_TASK_S * 10  # an image to encode: one job each, in parallel
    assert len(runtime._submit_uploads(pass_of_16, projects)) == 16


@pytest.mark.parametrize("measured", [UPLOAD_TASK_S / 100, UPLOAD_TASK_S * 10])
def test_one_failing_upload_fails_its_job_alone(runtime: Runtime, tmp_path: Path,
                                                measured: float) -> None:
    unit = unit_of(runtime, 40)
    runtime._upload_s = measured  # groups of up to 16 jobs (a pass), or of one
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
