"""A pass's outputs, encoded and stored on threads while the next pass computes.

A pass's jobs go to the threads in groups of about UPLOAD_TASK_S of work each, as measured: a
hand-over costs the worker more than writing a small file to a folder (64 of them took 1.9 ms in
one thread, 9 ms through eight), while an image to encode or an object to send to a bucket is a
task of its own, in parallel with the others. One job's failing upload fails that job alone.

A unit that ends early (its time limit, raised wherever the pass thread is) settles what it
handed over: groups not started never start, those started are waited for (a hung upload, to
the hard limit that ends the process), so that none of its writes lands after its jobs have
gone back to the queue, over the object a rerun stored and recorded.

A unit that falls silent (its worker cut off from the database, or stalled) is given up for lost
after its pulse grace, and its jobs rerun elsewhere, storing at the same keys. A write (an
output, once encoded; a family's chunk) starts only while the unit's pulse was confirmed within
half that grace, so it starts before anyone could have given the unit up: a worker cut off from the database while it still
reaches the bucket stops writing within half the grace, instead of storing over the reruns'
objects for as long as the partition lasts.
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from jobs.lifecycle import ClaimedJob, OutputRecord
from storage.base import Storage
from workers.family import Artifact

UPLOAD_TASK_S = 0.002  # an upload thread is handed about this much work at a time

# one job's outcome: its outputs' records, or the error that failed it (that job only)
Made = list[OutputRecord] | Exception
# what a group of jobs is handed over as: (project, job, its outputs)
ToStore = tuple[str, ClaimedJob, list[Artifact]]


@dataclass
class InFlight:
    """One pass's jobs whose outputs are being stored, handed over in ``groups`` (each with the
    number of jobs it holds, in the order of ``jobs``)."""

    jobs: list[ClaimedJob]
    share: float  # the pass's device seconds per job
    steady: bool  # the pass ran at the worker's steady pace (a guide to estimates)
    groups: list[tuple[Future[list[Made | None]], int]] = field(default_factory=list)

    def made(self) -> list[Made | None]:
        """Each job's outcome, in order, once the threads have stored them all."""
        return [m for group, _ in self.groups for m in group.result()]

    def settle(self) -> list[Made | None]:
        """Each job's outcome, ending early (after ``OutputWriter.settle``): None for a job of
        which nothing was written (its group cancelled, or never handed over)."""
        for group, _ in self.groups:
            group.cancel()
        outcomes: list[Made | None] = []
        for group, jobs in self.groups:
            outcomes += [None] * jobs if group.cancelled() else group.result()
        return outcomes + [None] * (len(self.jobs) - len(outcomes))


class OutputWriter:
    """The upload threads of a worker process, and what storing one job's outputs costs here."""

    def __init__(self, storage: Storage, threads: int, fresh_s: float) -> None:
        self.storage = storage
        self.fresh_s = fresh_s  # an upload starts only this soon after a confirmed pulse
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="upload")
        self._lock = threading.Lock()  # the threads measure, the pass thread reads
        self._per_job_s = 0.0
        self._idle = threading.Condition(self._lock)
        self._epoch = 0  # groups handed over before the last settle do not start
        self._running = 0  # groups storing now
        self._confirmed = -math.inf  # when the last confirmed pulse was written (monotonic)
        self._closed = True  # no unit open, or it ended early: nothing is written (see open)

    @property
    def per_job_s(self) -> float:
        """Seconds to encode and store one job's outputs, a moving average (0: not measured)."""
        with self._lock:
            return self._per_job_s

    @per_job_s.setter
    def per_job_s(self, seconds: float) -> None:
        with self._lock:
            self._per_job_s = seconds

    def submit(self, flight: InFlight, jobs: list[ToStore]) -> None:
        """Hand a pass's outputs (its jobs, in ``flight``'s order) to the threads, grouped by
        what a job's upload costs; each group joins ``flight`` as it is handed over."""
        per_job = self.per_job_s
        size = 1 if per_job <= 0 else max(1, min(len(jobs), int(UPLOAD_TASK_S / per_job)))
        with self._lock:
            epoch = self._epoch
        for i in range(0, len(jobs), size):
            group = jobs[i : i + size]
            flight.groups.append((self.pool.submit(self._store_group, epoch, group), len(group)))

    def open(self, at: float) -> None:
        """A unit claimed its jobs, its pulse written at ``at`` (``time.monotonic()`` taken before
        the write): its writes may start."""
        with self._idle:
            self._closed = False
            self._confirmed = at
            self._idle.notify_all()

    def confirm(self, at: float) -> None:
        """The unit's pulse, written at ``at`` (taken before the write), has committed: writes
        may start until ``fresh_s`` after it."""
        with self._idle:
            self._confirmed = max(self._confirmed, at)
            self._idle.notify_all()

    def may_write(self, epoch: int | None = None) -> bool:
        """Whether a write of the unit may start now, waiting while its pulse is not recent:
        False once the unit ended early (settled), or once ``epoch``, when given, is past."""
        with self._idle:
            self._idle.wait_for(lambda: self._closed or self._fresh()
                                or (epoch is not None and epoch != self._epoch))
            return not self._closed and (epoch is None or epoch == self._epoch)

    def settle(self) -> None:
        """From now on, no write of the unit: groups not started never start (each job None),
        nor does a write that waits or comes later (until the next unit opens); those storing
        finish their write and are waited for."""
        with self._idle:
            self._epoch += 1
            self._closed = True
            self._idle.notify_all()  # writes waiting for a pulse: they never start
            self._idle.wait_for(lambda: self._running == 0)

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def _store_group(self, epoch: int, jobs: list[ToStore]) -> list[Made | None]:
        with self._idle:
            if epoch != self._epoch or self._closed:  # settled before it started
                return [None] * len(jobs)
            self._running += 1
        try:
            t = time.perf_counter()
            made: list[Made | None] = []
            for project, job, arts in jobs:
                try:
                    made.append(self._store_job(project, job, arts, epoch))
                except Exception as exc:  # noqa: BLE001 - a failing upload fails its job only
                    made.append(exc)
            per_job = (time.perf_counter() - t) / len(jobs)
        finally:
            with self._idle:
                self._running -= 1
                self._idle.notify_all()
        with self._lock:
            old = self._per_job_s
            self._per_job_s = per_job if old <= 0 else 0.8 * old + 0.2 * per_job
        return made

    def _fresh(self) -> bool:
        return time.monotonic() - self._confirmed <= self.fresh_s

    def _store_job(self, project: str, job: ClaimedJob, arts: list[Artifact], epoch: int
                   ) -> list[OutputRecord] | None:
        """A job's outputs stored, each encoded first (which can take long: a video), then
        written once the unit's pulse is recent; None once the unit ended early."""
        records = []
        for art in arts:
            data = art.encode()
            # a pulse not confirmed lately (the database out of reach, the process stalled):
            # wait for the next, or for the unit to learn it was given up and settle
            if not self.may_write(epoch):
                return None
            records.append(self._store(project, job, art, data))
        return records

    def _store(self, project: str, job: ClaimedJob, art: Artifact, data: bytes) -> OutputRecord:
        key = self.storage.job_key(project, job.batch_id, job.id, art.name)
        stored = self.storage.put(key, data, art.content_type, art.metadata)
        return OutputRecord(art.name, stored.key, stored.sha256, stored.bytes, stored.content_type)
