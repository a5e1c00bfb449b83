"""A unit's outcomes, recorded in few transactions.

Finished passes' outcomes wait here and go to the database together, up to RECORD_JOBS jobs or
RECORD_S after the first of them was ready, with the passes they came from (for estimates);
the unit's last record also ends its pulse. A record that meets a transient database error is
tried again: its outcomes would otherwise be lost to a rerun.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from jobs import lifecycle
from jobs.estimates import record_passes
from jobs.lifecycle import JobResult
from jobs.models import Job
from jobs.pulse import pulse_end
from jobs.states import JobStatus
from storage.base import Storage
from workers.limits import reraise_time_limit

log = logging.getLogger("genfarm.worker")

RECORD_JOBS = 64  # finished passes' outcomes are recorded together, up to this many jobs ...
RECORD_S = 0.25  # ... or this long after the first of them was ready: one transaction for many
RECORD_WAITS = (0.25, 0.5, 1.0, 2.0)  # between tries of a record, then 2 s each, ...

Pass = tuple[str, str, int, float, float]  # (batch key, device, jobs, units, seconds)


@dataclass
class UnitReport:
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    requeued: int = 0
    skipped: int = 0
    batches_finished: list[str] = field(default_factory=list)
    # milliseconds per phase, for the unit's log line (where a unit's time beyond its passes
    # goes): claim, fill, run, finalize, release; within run: passes, uploads, record
    ms: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()

    def lap(self, phase: str, since: float) -> float:
        """Add the time since ``since`` (perf_counter) to ``phase``; returns now."""
        now = time.perf_counter()
        self.ms[phase] = round(self.ms.get(phase, 0.0) + (now - since) * 1000, 1)
        return now


def is_transient_db(exc: BaseException) -> bool:
    """A database error that another attempt on another connection may not meet: the server's
    (a deadlock, a serialization failure, a shutdown), a lost connection, a full pool."""
    return (isinstance(exc, (OperationalError, PoolTimeout))
            or (isinstance(exc, DBAPIError) and exc.connection_invalidated))


class Recorder:
    """The outcomes of one worker process's current unit, and how they reach the database."""

    def __init__(self, sessions: sessionmaker[Session], storage: Storage,
                 retry_s: float) -> None:
        self.sessions = sessions
        self.storage = storage
        self.retry_s = retry_s  # ... for as long as this after the first
        self.attempts: dict[str, tuple[int, int]] = {}  # the unit's jobs: (attempt, most)
        self._results: list[JobResult] = []  # finished passes' outcomes, not yet recorded
        self._passes: list[Pass] = []  # ... and those passes
        self._ready_at = 0.0  # when the first of them was ready

    def start(self, attempts: dict[str, tuple[int, int]]) -> None:
        """A new unit: nothing of the last one is recorded with it."""
        self.attempts = attempts
        self._results, self._passes = [], []

    def add(self, results: list[JobResult], passes: list[Pass]) -> None:
        if not self._results:
            self._ready_at = time.perf_counter()
        self._results.extend(results)
        self._passes.extend(passes)

    def due(self) -> bool:
        """Enough outcomes wait, or the first has waited long enough, for a record."""
        return (len(self._results) >= RECORD_JOBS
                or time.perf_counter() - self._ready_at >= RECORD_S)

    def flush(self, owner: str, report: UnitReport, end_pulse: bool = False) -> bool:
        """Record what waits, in one transaction (with ``end_pulse``, the unit's last: it ends
        the unit's pulse too). True when it ended the pulse."""
        if not self._results:
            return False
        results, passes = self._results, self._passes
        try:
            self._results, self._passes = [], []
            self.record(owner, results, report, passes, end_pulse=end_pulse)
        except BaseException:
            # not recorded (a time limit may end it anywhere): kept for the unit's ending to
            # record, which a record that did commit leaves with nothing to do
            if self._results is not results:
                self._results, self._passes = results + self._results, passes + self._passes
            raise
        return end_pulse

    def record(self, owner: str, results: list[JobResult], report: UnitReport,
               passes: Sequence[Pass] = (), end_pulse: bool = False) -> None:
        """Record outcomes, and the ``passes`` they came from, for estimates: one transaction,
        which with ``end_pulse`` also ends the unit's pulse (its last record: nothing of it is
        left running).

        A transient database error (a deadlock's victim, a connection the server ended, a
        failover) is met by trying again, RECORD_WAITS apart, for ``retry_s`` (the pulse's grace:
        a unit silent longer has lost its jobs to the reconciler anyway). Again is safe: only
        jobs this unit still holds are recorded, so an attempt that committed unseen leaves the
        next nothing to do (and its passes are not recorded again: estimates lose them rather
        than count them twice). The unit's time limit, met in the middle, is raised as itself."""
        t = time.perf_counter()
        deadline = time.monotonic() + self.retry_s
        attempt = 0
        while True:
            attempt += 1
            try:
                with self.sessions.begin() as session:
                    if end_pulse:  # the pulse row before the jobs, as the heartbeat takes
                        pulse_end(session, owner)  # them: the other order can deadlock with it
                    ok, failed, requeued = lifecycle.record(session, owner, results)
                    record_passes(session, passes if attempt == 1 else ())
                break
            except (DBAPIError, PoolTimeout) as exc:
                reraise_time_limit(exc)
                wait = RECORD_WAITS[min(attempt, len(RECORD_WAITS)) - 1]
                if not is_transient_db(exc) or time.monotonic() + wait > deadline:
                    raise
                log.warning("recording %d outcomes of %s failed (attempt %d), trying again in "
                            "%.2f s: %s", len(results), owner, attempt, wait,
                            str(exc).splitlines()[0])
                time.sleep(wait)
        report.lap("record", t)
        report.succeeded += len(ok)
        report.failed += len(failed)
        report.requeued += len(requeued)
        self._log_failures(results, failed, requeued)
        unrecorded = [r for r in results if r.outputs and r.job_id not in ok]
        if unrecorded:
            self._drop_cancelled_outputs(unrecorded)

    def _log_failures(self, results: list[JobResult], failed: set[str],
                      requeued: set[str]) -> None:
        """What happened, as recorded: a job that goes back to the queue is retrying (attempt
        n of m), one out of attempts (or with a permanent error) failed."""
        for r in results:
            attempt, most = self.attempts.get(r.job_id, (0, 0))
            if r.job_id in requeued:
                log.warning("job %s: attempt %d of %d failed, retrying: %s", r.job_id, attempt,
                            most, r.error)
            elif r.job_id in failed:
                why = "no attempts left" if attempt >= most else "not retryable"
                log.warning("job %s failed on attempt %d of %d (%s): %s", r.job_id, attempt,
                            most, why, r.error)

    def _drop_cancelled_outputs(self, results: list[JobResult]) -> None:
        """Objects uploaded for jobs cancelled meanwhile would be orphans: delete them. (Jobs
        lost to an expired lease keep theirs: the rerun writes the same keys.)"""
        with self.sessions() as session:
            cancelled = set(session.scalars(select(Job.id).where(
                Job.id.in_([r.job_id for r in results]), Job.status == JobStatus.CANCELLED)))
        for r in results:
            if r.job_id in cancelled:
                for out in r.outputs:
                    try:
                        self.storage.delete(out.key)
                    except Exception as exc:  # noqa: BLE001 - best effort: it is unreferenced
                        reraise_time_limit(exc)
                        log.warning("could not delete %s", out.key, exc_info=True)
