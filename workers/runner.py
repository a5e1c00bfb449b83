"""Running one work unit: claim, fill, forward passes, overlapped encode/upload, bulk record.

A pass's outputs are stored on threads by workers/outputs.py while the next pass computes; its
outcomes are recorded, a few passes to a transaction, by workers/recording.py.

Importing this module does not import torch; pipelines do, inside the worker process.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from celery.utils.log import current_process_index
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from jobs import lifecycle
from jobs.batches import done_batches, finalize_if_done
from jobs.catalog import Catalog, load_catalog
from jobs.db import make_engine, session_factory
from jobs.errors import GenfarmError, PipelineError
from jobs.lifecycle import ClaimedJob, JobResult
from jobs.models import Batch, Job
from jobs.pulse import pulse, pulse_end, pulse_start
from jobs.registry import default_cost
from jobs.settings import Settings
from jobs.states import JobStatus
from jobs.submit import Publisher, publish_jobs
from storage import open_storage
from storage.errors import StorageUnavailable
from workers.family import Family, JobContext, JobFailed
from workers.limits import reraise_time_limit, time_limit_of
from workers.outputs import InFlight, Made, OutputWriter
from workers.passes import PassSizes
from workers.recording import Pass, Recorder, UnitReport

log = logging.getLogger("genfarm.worker")
IDLE_S = 2.0  # a worker without a pass for this long has gone idle (for throughput figures)

HELD_CHECK_S = 0.5  # how often, at most, a unit asks which of its jobs were cancelled meanwhile
SETUP_RETRY_S = 60.0  # a model that failed to set up is tried again after this long


class UnitLost(Exception):
    """The unit was given up for lost while it ran (see Runtime._heartbeat): it stops."""


def is_oom(exc: BaseException) -> bool:
    """Host or device memory ran out (torch's OutOfMemoryError, by class, on any backend)."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"


def is_transient(exc: BaseException) -> bool:
    """Errors worth another attempt: a family's Retry, storage, network, database connection,
    out of memory. A family's PermanentError, and anything else, is not."""
    if isinstance(exc, JobFailed):
        return exc.retryable
    if isinstance(exc, (StorageUnavailable, ConnectionError, TimeoutError, OperationalError,
                        PoolTimeout)):
        return True
    return is_oom(exc)


def pick_device(settings: Settings, slot: int | None = None) -> str:
    """GENFARM_DEVICE when it names one; else CUDA when there is a GPU, where the pool process
    numbered ``slot`` computes on GPU ``slot`` (modulo their count), made its current device;
    else the CPU."""
    if settings.device and not settings.device.startswith("cuda"):
        return settings.device
    import torch

    if not torch.cuda.is_available():
        return settings.device or "cpu"
    if settings.device and settings.device != "cuda":  # pinned: cuda:1
        torch.cuda.set_device(settings.device)  # what a family leaves unplaced lands there too
        return settings.device
    count = torch.cuda.device_count()
    if count < 2 or slot is None:
        return "cuda"
    torch.cuda.set_device(slot % count)
    return f"cuda:{slot % count}"


def lease_extension(settings: Settings) -> float:
    """How often a running unit extends its jobs' leases (a third of a lease)."""
    return max(0.5, settings.lease_seconds / 3)


def device_kind(device: str) -> str:
    """What measures of pass sizes and throughput are kept under: a machine's GPUs alike."""
    return "cuda" if device.startswith("cuda:") else device


class Runtime:
    """What a worker process needs, made once per process after fork (never in the parent).

    ``worker_id`` names the worker (its main process), so that claims can be handed back
    by worker; ``draining`` is set when the worker begins a warm shutdown; ``publish``
    republishes jobs handed back.
    """

    def __init__(self, settings: Settings, *, worker_id: str | None = None,
                 draining: Any = None, publish: Publisher | None = None) -> None:
        self.settings = settings
        self.pid = os.getpid()
        self.name = f"{worker_id or socket.gethostname()}:{self.pid}"
        self.draining = draining
        self.publish = publish
        self.fits: dict[str, int] = {}  # batch key -> largest pass known to fit in memory
        self._passes: PassSizes | None = None  # made on first use: it needs the device
        self.engine = make_engine(settings.resolved_database_url())
        self.sessions = session_factory(self.engine)
        self.storage = open_storage(settings.resolved_storage_url(),
                                    endpoint_url=settings.s3_endpoint_url,
                                    max_connections=settings.upload_threads + 4)
        # a write starts only within half the grace of a confirmed pulse: it begins before
        # anyone could give the unit up for lost (see workers/outputs.py); nor later than its
        # jobs' leases (extended every third of one) could run out, the backstop
        self.outputs = OutputWriter(self.storage, settings.upload_threads, min(
            settings.pulse_grace_seconds / 2, settings.lease_seconds - lease_extension(settings)))
        self.catalog: Catalog = load_catalog(settings)
        self.families: dict[str, Family] = {}
        self.broken: dict[str, tuple[float, Exception]] = {}  # model -> (when, why) setup failed
        self._device: str | None = None
        self._project_of: dict[str, str] = {}  # batch id -> project, which never changes
        self.warm: set[str] = set()  # batch keys that have had a pass in this process
        self._last_pass: float | None = None  # when the last forward pass ended
        self.recorder = Recorder(self.sessions, self.storage, settings.pulse_grace_seconds)
        self._in_flight: list[InFlight] = []  # passes whose outputs are being stored
        self._lost = threading.Event()  # the unit's heartbeat found it given up for lost

    @property
    def device(self) -> str:
        if self._device is None:
            self._device = pick_device(self.settings, current_process_index(base=0))
            import torch

            if self.settings.cpu_threads:
                torch.set_num_threads(self.settings.cpu_threads)
            log.info("process %d computes on %s, torch CPU threads: %d", self.pid,
                     self._device, torch.get_num_threads())
        return self._device

    def family(self, model: str) -> Family:
        """The worker side of ``model``, set up on this process's device on first use."""
        fam = self.families.get(model)
        if fam is not None:
            return fam
        failed = self.broken.get(model)
        if failed is not None and time.monotonic() - failed[0] < SETUP_RETRY_S:
            raise failed[1]  # do not load (and hash) gigabytes again for every pass
        try:
            if model not in self.catalog.models:
                raise PipelineError(f"model {model!r} is not in this worker's models file")
            spec = self.catalog.family(model)
            fam = spec.load_worker()(self.catalog.models[model], self.settings)
            device = self.device if spec.uses_device else "cpu"
            fam.setup(device, default_dtype(self.settings, device))
        except Exception as exc:
            if time_limit_of(exc) is None:  # the unit's limit is no fault of the model's
                self.broken[model] = (time.monotonic(), exc)
            raise
        self.families[model] = fam
        # what setup made (torch's modules, a model's weights and layers: hundreds of thousands
        # of objects that live as long as the process) leaves the collector's scans: a full
        # collection walked them all, about 100 ms every few hundred units. Garbage first:
        # a frozen cycle (a failed pass's traceback holding tensors) would never be freed
        gc.collect()
        gc.freeze()
        return fam

    def close(self) -> None:
        self.outputs.close()
        self.engine.dispose()

    # -- one unit --------------------------------------------------------------------------
    def run_unit(self, job_ids: Sequence[str], queue: str | None = None) -> UnitReport:
        """Claim and run a unit: with ``queue``, a unit's worth of the best-ranked queued jobs
        there (its own ids only count how many to take); without, its own ids."""
        s = self.settings
        owner = f"{self.name}:{uuid.uuid4().hex[:8]}"
        report = UnitReport()
        draining = self.draining is not None and self.draining.is_set()
        out_of_time = bool(queue) and not draining and self._prepare(queue or "")
        t = time.perf_counter()
        # one transaction for the claim, its top-up and the projects: each transaction costs a
        # checkout (with its ping), a commit and the session's own work, which an idle worker's
        # one job waits for
        began = time.monotonic()  # its pulse is written after this
        with self.sessions.begin() as session:
            if queue:
                limit = max(len(job_ids), 1)
                claimed = lifecycle.claim_next(session, queue, limit, owner, s.lease_seconds)
                # short of the limit: every key it took ran out, its first one too
                exhausted = len(claimed) < limit
            else:
                claimed = lifecycle.claim(session, job_ids, owner, s.lease_seconds)
                exhausted = False
            if claimed:  # from now on, this unit pulses (see _heartbeat)
                pulse_start(session, owner)
            t = report.lap("claim", t)
            # top up the last forward pass with queued jobs of the same key from any batch
            short = (-len(claimed)) % s.max_batch
            if claimed and short and not exhausted:
                claimed += lifecycle.fill(session, claimed[0].batch_key, short, owner,
                                          s.lease_seconds)
                t = report.lap("fill", t)
            projects = self._projects({c.batch_id for c in claimed}, session)
        t = report.lap("claim", t)
        self.recorder.start({c.id: (c.attempt, c.max_attempts) for c in claimed})
        if claimed:
            self.outputs.open(began)
            if out_of_time:  # the model's setup took the unit's time: its jobs retry, counted
                self._time_out(owner, report)
                return report
            try:
                claimed += self._gather(owner, claimed)
            except Exception as exc:
                if time_limit_of(exc) is None:
                    raise  # its pulse, left to fall silent: the reconciler hands its jobs back
                self._time_out(owner, report)  # a slow claim left no time: its jobs retry
                return report
            t = report.lap("gather", t)
            self.recorder.start({c.id: (c.attempt, c.max_attempts) for c in claimed})
        report.claimed = len(claimed)
        asked = set(job_ids)
        report.skipped = len(asked) - sum(c.id in asked for c in claimed)
        if not claimed:
            return report
        stop, self._lost = threading.Event(), threading.Event()
        beat = threading.Thread(target=self._heartbeat,
                                args=(owner, [c.id for c in claimed], stop, self._lost),
                                daemon=True)
        beat.start()
        # whether the unit's pulse has ended, or is left to fall silent: a unit that an error
        # ended (a record that failed for good) leaves it, so that the reconciler hands back
        # the jobs it still holds within seconds (when their leases end, otherwise)
        ended = False
        try:
            ended = self._run_claimed(owner, claimed, projects, report)
        except UnitLost:
            ended = True  # by the reconciler
            log.warning("unit %s was given up for lost (silent past its grace): its jobs went "
                        "back to the queue, and it stopped", owner)
        except BaseException as exc:
            ended = True  # by the time-out's record, or left
            if time_limit_of(exc) is None:
                raise
            self._time_out(owner, report)
        finally:
            stop.set()
            beat.join(timeout=5)
            if not ended:  # nothing was left to record
                self._end_pulse(owner)
            # nothing of this unit joins the next one's record
            self.recorder.start({})
            self._in_flight = []
        t = report.lap("run", t)
        self._after_unit({c.batch_id for c in claimed}, report)
        report.lap("finalize", t)
        return report

    def _prepare(self, queue: str) -> bool:
        """The model of ``queue`` set up before any job is claimed: a process's first unit loads
        torch and the weights (seconds, much of it holding the GIL, which the heartbeat then
        waits for) while it holds no lease. A model that cannot set up is left to the pass,
        which records the error for the jobs it claimed (they retry). True when the unit's time
        limit came first: the unit still claims, and its jobs are timed out (an attempt each),
        so a model too slow to set up ends its jobs in the end instead of holding them queued."""
        model = queue if queue in self.catalog.models else queue.removesuffix(".long")
        if model in self.families or model not in self.catalog.models:
            return False
        try:
            self.family(model)
        except Exception as exc:  # noqa: BLE001 - kept in self.broken, raised at the pass
            if time_limit_of(exc) is not None:
                return True
        return False

    def _after_unit(self, batch_ids: set[str], report: UnitReport) -> None:
        """One transaction asks whether the unit's batches are done and starts the jobs that
        were waiting on what it finished (not at the next reconciler pass; their batches close
        if they failed upstream); the batches done are then finalized."""
        released: list[tuple[str, str, str, int]] = []
        try:
            with self.sessions.begin() as session:
                done = done_batches(session, sorted(batch_ids))
                released, _ = lifecycle.release_waiting(session)
        except Exception:  # noqa: BLE001 - the reconciler finalizes and releases at its next pass
            log.warning("could not finalize batches or release waiting jobs", exc_info=True)
            return
        for batch_id in done:
            if finalize_if_done(self.sessions, self.storage, batch_id):
                report.batches_finished.append(batch_id)
        if released and self.publish is not None:
            try:
                publish_jobs(self.sessions, self.publish, released, self.settings.unit_size)
            except Exception:  # noqa: BLE001 - the reconciler publishes them instead
                log.warning("could not publish %d released jobs", len(released), exc_info=True)

    def _gather(self, owner: str, claimed: list[ClaimedJob]) -> list[ClaimedJob]:
        """Jobs of the same key submitted within GENFARM_BATCH_WAIT_SECONDS, for a unit too
        small for its pass: lone jobs from many submissions share a forward pass instead of
        each running alone. Bounded: at most the wait, one small read every 10 ms."""
        wait = self.settings.batch_wait_seconds
        key = claimed[0].batch_key
        if (wait <= 0 or not self._measures_passes(claimed[0])  # no device: nothing to share
                or any(c.batch_key != key for c in claimed)):
            return []
        need = self._pass_size(claimed[0]) - len(claimed)
        more: list[ClaimedJob] = []
        deadline = time.perf_counter() + wait
        while need > len(more) and time.perf_counter() < deadline:
            time.sleep(min(0.01, max(0.0, deadline - time.perf_counter())))
            with self.sessions.begin() as session:
                more += lifecycle.fill(session, key, need - len(more), owner,
                                       self.settings.lease_seconds)
                if more:
                    self._projects({c.batch_id for c in more}, session)
        return more

    def _time_out(self, owner: str, report: UnitReport) -> None:
        """The unit's time limit: every job it still holds (whatever phase it was in, jobs its
        gather claimed too) is recorded as failed, retryable, and its pulse ends. Outcomes not
        yet recorded (a record the limit cut short) are recorded first, as they came."""
        self.recorder.flush(owner, report)
        with self.sessions() as session:
            held = list(session.scalars(select(Job.id).where(
                Job.lease_owner == owner, Job.status == JobStatus.RUNNING)))
        log.warning("unit time limit: %d jobs left, each will retry", len(held))
        self.recorder.record(owner, [JobResult(j, error="unit time limit exceeded", retryable=True)
                             for j in held], report, end_pulse=True)

    def _heartbeat(self, owner: str, job_ids: list[str], stop: threading.Event,
                   lost: threading.Event) -> None:
        """The unit's pulse every GENFARM_PULSE_SECONDS (one row: a silent unit's jobs go back
        to the queue within seconds), and the leases of its jobs not yet recorded extended
        every third of a lease (the backstop, a write per job).

        Each pulse that commits lets the unit's uploads go on (they wait once the last is older
        than half the grace). A pulse that finds its row gone was given up for lost (silent past
        its grace: a stall, a partition): its jobs are back in the queue, and reruns will store
        their outputs at the same keys. It sets ``lost`` and settles the upload threads at once:
        nothing more of the unit is written (uploads already storing finish), and the unit stops
        before its next pass."""
        s = self.settings
        extend_every = lease_extension(s)
        extended = time.monotonic()
        while not stop.wait(min(s.pulse_seconds, extend_every)):
            began = time.monotonic()
            try:
                with self.sessions.begin() as session:
                    alive = pulse(session, owner)
                    if alive and time.monotonic() - extended >= extend_every:
                        lifecycle.heartbeat(session, owner, job_ids, s.lease_seconds)
                        extended = time.monotonic()
            except Exception:  # noqa: BLE001 - a missed beat is retried; the lease has slack
                log.warning("heartbeat failed for %s", owner, exc_info=True)
                continue
            if alive:
                self.outputs.confirm(began)  # uploads may go on
            elif not stop.is_set():  # (its own last record ends it too)
                lost.set()
                self.outputs.settle()
                return

    def _end_pulse(self, owner: str) -> None:
        try:
            with self.sessions.begin() as session:
                pulse_end(session, owner)
        except Exception:  # noqa: BLE001 - a stale pulse of a finished unit ends nothing
            log.warning("could not end the pulse of %s", owner, exc_info=True)

    def _run_claimed(self, owner: str, claimed: list[ClaimedJob], projects: dict[str, str],
                     report: UnitReport) -> bool:
        """Run the claimed jobs; True when the last record ended the unit's pulse."""
        by_key: dict[str, list[ClaimedJob]] = {}
        for job in claimed:
            by_key.setdefault(job.batch_key, []).append(job)
        try:
            self._run_keys(owner, by_key, projects, report)
        except BaseException as exc:
            # whatever ends the unit: no write of it lands after its jobs go back to the queue
            # (settled: uploads started finish, the others never start), and what finished is
            # recorded: by the time-out, or here (not after a database error: it would meet
            # it again, and the jobs go back by the reconciler)
            self._settle(report)
            if time_limit_of(exc) is None and not isinstance(exc, (DBAPIError, PoolTimeout)):
                self.recorder.flush(owner, report)
            raise
        # the unit's last record ends its pulse too: one transaction, not two
        return self.recorder.flush(owner, report, end_pulse=True)

    def _run_keys(self, owner: str, by_key: dict[str, list[ClaimedJob]],
                  projects: dict[str, str], report: UnitReport) -> None:
        """Each key's jobs in passes of its size, recording each pass while the next computes."""
        checked = time.perf_counter()
        for key, jobs in by_key.items():
            done = 0
            while done < len(jobs):
                # one job left: its pass holds it alone whatever the size (asking costs an idle
                # worker's job a read of pass_sizes while its key is unmeasured)
                size = self._pass_size(jobs[0]) if len(jobs) - done > 1 else 1
                chunk = jobs[done : done + size]
                done += len(chunk)
                if self.draining is not None and self.draining.is_set():
                    self._hand_back(owner, jobs[done - len(chunk):], report)
                    break
                if self._lost.is_set():
                    raise UnitLost(owner)
                if done > len(chunk) and time.perf_counter() - checked >= HELD_CHECK_S:
                    # a boundary: drop jobs cancelled or lost since the claim (a job cancelled
                    # between two checks still runs; its outputs are dropped when recorded)
                    chunk = self._still_held(owner, chunk)
                    checked = time.perf_counter()
                if chunk:
                    self._run_pass(owner, key, chunk, projects, report)
                while len(self._in_flight) > 1:  # one pass in flight, stored as the next computes
                    self._finish(owner, report)
        while self._in_flight:  # the last is recorded by the unit's closing record, with its pulse
            self._finish(owner, report, last=len(self._in_flight) == 1)

    def _largest(self, key: str) -> int:
        """The largest pass of ``key``: --max-batch, or less where out of memory said so."""
        return min(self.settings.max_batch, self.fits.get(key, self.settings.max_batch))

    def _measures_passes(self, job: ClaimedJob) -> bool:
        """Only models on a device have a best pass size (a family with no device work, such as
        noop, costs the same per job whatever the pass, so the largest pass saves round trips)."""
        spec = self.catalog.family(job.model) if job.model in self.catalog.models else None
        return spec is not None and spec.uses_device

    def _pass_size(self, job: ClaimedJob) -> int:
        largest = self._largest(job.batch_key)
        if not self._measures_passes(job):
            return largest
        return self.passes.size(job.batch_key, largest)

    @property
    def passes(self) -> PassSizes:
        if self._passes is None:
            dtype = str(default_dtype(self.settings, self.device)).removeprefix("torch.")
            device = self.device
            if device == "cpu":  # a CPU's best pass depends on how many threads compute it
                import torch

                device = f"cpu:{torch.get_num_threads()}-thread"
            device = device_kind(device)
            self._passes = PassSizes(self.sessions, device, dtype)
        return self._passes

    def _run_pass(self, owner: str, key: str, chunk: list[ClaimedJob], projects: dict[str, str],
                  report: UnitReport) -> None:
        """One forward pass. A pass that fails is split in halves and each half retried, so a
        poison job ends up failing alone; out of memory also lowers the size that fits."""
        model = chunk[0].model or chunk[0].params.get("model", "")
        try:
            fam = self.family(model)
        except Exception as exc:  # noqa: BLE001 - the model, not its jobs: they go back, retried
            reraise_time_limit(exc)
            log.error("model %s cannot run on this worker: %s", model, _describe(exc))
            self.recorder.add([JobResult(j.id, error=f"model {model} cannot run on this worker: "
                                         f"{_describe(exc)}", retryable=True) for j in chunk], [])
            return
        try:
            t0 = time.perf_counter()
            # a pass after the worker sat idle (or its first) wakes threads and caches: its
            # time is real, but no guide to the steady rate that estimates need
            steady = self._last_pass is not None and t0 - self._last_pass < IDLE_S
            results = fam.run([self._context(owner, j, projects[j.batch_id]) for j in chunk])
            self._last_pass = report.lap("passes", t0)
            share = (self._last_pass - t0) / len(chunk)
            if steady and self._measures_passes(chunk[0]):
                self.passes.observe(key, len(chunk), self._last_pass - t0, self._largest(key))
        except Exception as exc:  # noqa: BLE001 - isolated below, recorded per job in the end
            reraise_time_limit(exc)  # (a long job's own reads of the database meet it too)
            if self._lost.is_set():  # its writes were refused: the reruns' to make
                raise UnitLost(owner) from exc
            if len(chunk) > 1:
                half = len(chunk) // 2
                if is_oom(exc):
                    self.fits[key] = min(self.fits.get(key, len(chunk)), half)
                    log.warning("out of memory at %d %s jobs; passes of %s now hold %d",
                                len(chunk), chunk[0].kind, key, self.fits[key])
                else:
                    log.warning("a pass of %d %s jobs failed (%s); splitting it", len(chunk),
                                chunk[0].kind, _describe(exc))
                self._run_pass(owner, key, chunk[:half], projects, report)
                self._run_pass(owner, key, chunk[half:], projects, report)
                return
            self.recorder.add([JobResult(chunk[0].id, error=_describe(exc),
                                         retryable=is_transient(exc))], [])
            return
        failed = [(j, r) for j, r in zip(chunk, results, strict=True) if isinstance(r, JobFailed)]
        if failed:
            self.recorder.add([JobResult(j.id, error=str(e), retryable=e.retryable,
                                         device_seconds=share) for j, e in failed], [])
        done = [(j, r) for j, r in zip(chunk, results, strict=True) if not isinstance(r, JobFailed)]
        if not done:
            return
        if self._lost.is_set():  # its outputs are the reruns' to store
            raise UnitLost(owner)
        # in flight before any of it is handed over: a unit ending meanwhile settles it
        flight = InFlight([j for j, _ in done], share, steady)
        self._in_flight.append(flight)
        self.outputs.submit(flight, [(projects[j.batch_id], j, arts) for j, arts in done])

    def _context(self, owner: str, job: ClaimedJob, project: str) -> JobContext:
        """What a family may know and do about one job (long jobs store partial work)."""
        return JobContext(job.id, job.batch_id, project, job.attempt, job.kind, job.params,
                          self.storage, lambda: bool(self._still_held(owner, [job])),
                          lambda done: self._progress(owner, job.id, done),
                          self.outputs.may_write)

    def _progress(self, owner: str, job_id: str, done: float) -> bool:
        with self.sessions.begin() as session:
            return lifecycle.set_progress(session, owner, job_id, done)

    def _hand_back(self, owner: str, jobs: list[ClaimedJob], report: UnitReport) -> None:
        """Warm shutdown: jobs not started go back to the queue at once, attempt refunded."""
        with self.sessions.begin() as session:
            back = lifecycle.release(session, owner, [j.id for j in jobs], "worker shutting down")
        report.requeued += len(back)
        if back and self.publish is not None:
            mine = [(j.id, j.queue, j.batch_key, 0, j.batch_id) for j in jobs if j.id in back]
            try:
                publish_jobs(self.sessions, self.publish, mine, self.settings.unit_size)
            except Exception:  # noqa: BLE001 - the reconciler publishes them instead
                log.warning("could not republish %d handed-back jobs", len(mine), exc_info=True)

    def _finish(self, owner: str, report: UnitReport, last: bool = False) -> None:
        """The oldest pass in flight: its outcomes, once stored, join the next record."""
        t = time.perf_counter()
        flight = self._in_flight[0]
        # popped once collected: a unit ending before settles it (collected twice at worst, which
        # records the same outcomes again: never a stored output left unrecorded)
        self._collect(flight.jobs, flight.made(), flight.share, flight.steady)
        self._in_flight.pop(0)
        report.lap("uploads", t)  # what the pass did not hide of encoding and uploading
        if not last and self.recorder.due():
            self.recorder.flush(owner, report)

    def _settle(self, report: UnitReport) -> None:
        """The unit ends early: nothing it handed over is written from now on; each pass in
        flight keeps what it stored (those jobs succeed), and the jobs whose uploads never
        started are left to the unit's ending (the time-out retries them; after an error, the
        reconciler)."""
        t = time.perf_counter()
        self.outputs.settle()
        while self._in_flight:
            flight = self._in_flight[0]
            self._collect(flight.jobs, flight.settle(), flight.share, flight.steady)
            self._in_flight.pop(0)
        report.lap("uploads", t)

    def _collect(self, jobs: list[ClaimedJob], made: list[Made | None], share: float,
                 steady: bool) -> None:
        """A pass's outcomes into the next record, with the pass itself (for estimates); a job
        of which nothing was stored (None: a unit ending early) is left out."""
        results = []
        for job, outcome in zip(jobs, made, strict=True):
            if outcome is None:
                continue
            if isinstance(outcome, Exception):
                results.append(JobResult(job.id, error=_describe(outcome),
                                         retryable=is_transient(outcome), device_seconds=share))
            else:
                results.append(JobResult(job.id, outcome, share))
        self.recorder.add(results, self._throughput_of(jobs, share, steady))

    def _throughput_of(self, chunk: list[ClaimedJob], share: float, steady: bool) -> list[Pass]:
        """The pass of ``chunk`` for estimates, (batch key, device, jobs, units, seconds), or
        nothing for a pass that is no guide to the next jobs' cost."""
        first = chunk[0]
        if first.batch_key not in self.warm or not steady:  # a key's first pass pays one-time
            self.warm.add(first.batch_key)                  # costs (caches, allocations)
            return []
        if self._measures_passes(first) and not self.passes.settled(first.batch_key, len(chunk)):
            # a probe of another pass size: it costs more per job than the size the key runs
            # at, so estimates of the next jobs would count it too high
            return []
        spec = self.catalog.family(first.model) if first.model in self.catalog.models else None
        device = device_kind(self.device) if spec is None or spec.uses_device else "cpu"
        cost = spec.cost if spec is not None else default_cost
        units = sum(cost(j.kind, j.params) for j in chunk)
        return [(first.batch_key, device, len(chunk), units, share * len(chunk))]

    def _still_held(self, owner: str, chunk: list[ClaimedJob]) -> list[ClaimedJob]:
        """The jobs of ``chunk`` this claim still owns: cancelled or lost ones are dropped here."""
        with self.sessions() as session:
            held = set(session.scalars(select(Job.id).where(  # owner: only while running
                Job.id.in_([j.id for j in chunk]), Job.lease_owner == owner)))
        return [j for j in chunk if j.id in held]

    def _projects(self, batch_ids: set[str], session: Session) -> dict[str, str]:
        missing = batch_ids - self._project_of.keys()
        if missing:
            rows = session.execute(select(Batch.id, Batch.project).where(Batch.id.in_(missing)))
            self._project_of.update({b: p for b, p in rows})
        return self._project_of


def _describe(exc: BaseException) -> str:
    if isinstance(exc, GenfarmError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def default_dtype(settings: Settings, device: str) -> Any:
    """float64 on the CPU with exact_cpu (a job's bytes never depend on its batch), else float32;
    a family may compute in another (its options say which)."""
    import torch

    return torch.float64 if device == "cpu" and settings.exact_cpu else torch.float32
