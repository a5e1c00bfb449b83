"""A unit's record that meets a transient database error (here its connection ended by the
server, as in a failover or an administrator's command, while it waits on a lock) is tried
again on another connection: its outcomes are recorded once, not lost to a rerun. One that
fails for good leaves the unit's pulse to fall silent, so its jobs go back within seconds."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import func, select, text
from sqlalchemy.exc import OperationalError

from jobs.db import upgrade
from jobs.manifest import parse_manifest
from jobs.models import Job, Output, UnitPulse
from jobs.pulse import expire_silent_units
from jobs.settings import Settings
from jobs.submit import WorkUnit, submit
from workers.runner import Runtime


@pytest.fixture
def pg_runtime(pg_url: str, tmp_path: Path) -> Iterator[Runtime]:
    upgrade(pg_url)
    # a record is tried again for as long as a unit's pulse grace: 3 s here
    rt = Runtime(Settings(database_url=pg_url, data_dir=tmp_path / "data",
                          storage_url=(tmp_path / "out").as_uri(), batch_wait_seconds=0,
                          pulse_seconds=1, pulse_grace_seconds=3))
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
        ended: set[int] = set()
        try:
            while self.cut < self._times and not self.stop.wait(0.01):
                # a write of outputs waiting on the lock (a heartbeat may wait too, on the
                # pulse row the record holds: it is left alone), each connection once
                waiting = self._watcher.scalars(text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND query ILIKE '%outputs%' "
                    "AND pid <> pg_backend_pid()")).all()
                for pid in set(waiting) - ended:
                    self._watcher.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
                    ended.add(pid)
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
    assert cutter.cut >= 3  # tries of the unit's last record, 0.25, 0.5, 1 s... apart
    assert time.monotonic() - t0 < 30  # for the pulse's grace, not forever
    # nothing recorded; the jobs still held, by a unit that no longer pulses
    assert counts(pg_runtime) == {"jobs": {"running": 40}, "outputs": 0, "pulses": 1}
    with pg_runtime.sessions.begin() as s:  # the reconciler, once the unit is silent past grace
        assert expire_silent_units(s, 0.0) == 40


def test_a_time_limit_while_a_record_waits_on_the_server_is_the_units_time_limit(
        pg_runtime: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    """The unit's time limit, raised while the driver waits on the server, leaves the connection
    busy, and the rollback's error (an OperationalError, which is transient) takes its place.
    It is still the time limit: the record is not tried again past it, and the time-out records
    the unit's outcomes (here every job had its output stored: all succeed, once)."""
    unit = unit_of(pg_runtime, 40)
    holder = pg_runtime.engine.connect()
    holder.begin()
    holder.execute(text("LOCK TABLE outputs IN SHARE MODE"))
    watcher = pg_runtime.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    stop = threading.Event()

    def limit(*_: Any) -> None:
        raise SoftTimeLimitExceeded()

    def at_the_record() -> None:  # the record waits on the lock: the limit, then the lock goes
        try:
            while not stop.wait(0.01):
                if watcher.scalar(text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock' AND query ILIKE '%outputs%'")):
                    os.kill(os.getpid(), signal.SIGUSR1)
                    time.sleep(0.3)
                    break
        finally:
            holder.rollback()
            holder.close()
            watcher.close()

    previous = signal.signal(signal.SIGUSR1, limit)
    thread = threading.Thread(target=at_the_record)
    try:
        thread.start()
        with caplog.at_level(logging.WARNING, logger="genfarm.worker"):
            report = pg_runtime.run_unit(unit.job_ids, unit.queue)
    finally:
        stop.set()
        thread.join(timeout=30)
        signal.signal(signal.SIGUSR1, previous)
    assert "unit time limit" in caplog.text and "trying again" not in caplog.text
    assert report.succeeded == 40
    assert counts(pg_runtime) == {"jobs": {"succeeded": 40}, "outputs": 40, "pulses": 0}
