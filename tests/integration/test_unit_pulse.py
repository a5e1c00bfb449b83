"""A work unit's pulse row lives exactly as long as the unit, on SQLite and PostgreSQL: its last
record ends it in the same transaction, and a unit whose last outcome was not a finished pass
(a poison job recorded as it failed) ends it on its own. A pulse left behind would make the
reconciler take a finished unit for a silent one."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import event, func, select

from jobs.manifest import parse_manifest
from jobs.models import Job, UnitPulse
from jobs.submit import WorkUnit, submit
from workers.runner import Runtime


def unit_of(runtime: Runtime, line: dict[str, Any]) -> WorkUnit:
    units: list[WorkUnit] = []
    submit(runtime.sessions, "acme", parse_manifest(json.dumps(line)), units.extend, unit_size=64)
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
