"""A unit's record that meets a transient database error (here its connection ended by the
server, as in a failover or an administrator's command, while it waits on a lock) is tried
again on another connection: its outcomes are recorded once, not lost to a rerun. One that
fails for good leaves the unit's pulse to fall silent, so its jobs go back within seconds."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import OperationalError

from jobs.db import upgrade
from jobs.manifest import parse_manifest
from jobs.models import Job, Output, UnitPulse
from jobs.pulse import expire_silent_units
from jobs.settings import Settings
from jobs.submit import WorkUnit, submit
from workers.recording import RECORD_TRIES
from workers.runner import Runtime


@pytest.fixture
def pg_runtime(pg_url: str, tmp_path: Path) -> Iterator[Runtime]:
    upgrade(pg_url)
    rt = Runtime(Settings(database_url=pg_url, data_dir=tmp_path / "data",
                          storage_url=(tmp_path / "out").as_uri(), batch_wait_seconds=0))
    yield rt
    rt.close()


def unit_of(runtime: Runtime, jobs: int) -> WorkUnit:
    units: list[WorkUnit] = []
    submit(runtime.sessions, "acme", parse_manifest(json.dumps(
        {"kind": "noop", "tag": {"range": [0, jobs]}})), units.extend, unit_size=64)
    assert len(units) == 1
    return units[0]


class RecordCutter:
    """Holds the outputs table against writes (readers and claims go on), and ends the server
    connection of each transaction that waits for it, ``times`` times (or until ``stop``);
    then lets writes through."""

    def __init__(self, runtime: Runtime, times: int) -> None:
        self.cut = 0
        self.stop = threading.Event()
        self._times = times
        self._blocker = runtime.engine.connect()
        self._blocker.begin()
        self._blocker.execute(text("LOCK TABLE outputs IN SHARE MODE"))
        self._watcher = runtime.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        try:
            while self.cut < self._times and not self.stop.wait(0.01):
                waiting = self._watcher.scalars(text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()")).all()
                for pid in waiting:
                    self._watcher.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
                    self.cut += 1
        finally:
            self._blocker.rollback()
            self._blocker.close()
            self._watcher.close()

    def done(self) -> None:
        self.stop.set()
        self._thread.join(timeout=30)


def counts(runtime: Runtime) -> dict[str, Any]:
    with runtime.sessions() as s:
        return {"jobs": dict(s.execute(select(Job.status, func.count()).group_by(Job.status))
                             .all()),
                "outputs": s.scalar(select(func.count()).select_from(Output)),
                "pulses": s.scalar(select(func.count()).select_from(UnitPulse))}


def test_a_record_whose_connection_is_ended_is_tried_again(pg_runtime: Runtime) -> None:
    unit = unit_of(pg_runtime, 40)
    cutter = RecordCutter(pg_runtime, times=2)
    try:
        report = pg_runtime.run_unit(unit.job_ids, unit.queue)
    finally:
        cutter.done()
    assert cutter.cut == 2
    assert report.succeeded == 40
    assert counts(pg_runtime) == {"jobs": {"succeeded": 40}, "outputs": 40, "pulses": 0}


def test_a_record_that_fails_for_good_leaves_the_units_pulse_to_fall_silent(
        pg_runtime: Runtime) -> None:
    unit = unit_of(pg_runtime, 40)
    cutter = RecordCutter(pg_runtime, times=1000)
    t0 = time.monotonic()
    try:
        with pytest.raises(OperationalError):
            pg_runtime.run_unit(unit.job_ids, unit.queue)
    finally:
        cutter.done()
    assert cutter.cut >= RECORD_TRIES  # every try of the unit's last record
    assert time.monotonic() - t0 < 60
    # nothing recorded; the jobs still held, by a unit that no longer pulses
    assert counts(pg_runtime) == {"jobs": {"running": 40}, "outputs": 0, "pulses": 1}
    with pg_runtime.sessions.begin() as s:  # the reconciler, once the unit is silent past grace
        assert expire_silent_units(s, 0.0) == 40
