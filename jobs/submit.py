"""Submission: one transaction for the batch and all its jobs, then work units published after commit."""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from jobs import lifecycle
from jobs.batches import reopen
from jobs.budgets import check_budget
from jobs.bulk import plan, write_jobs
from jobs.catalog import Catalog
from jobs.errors import GenfarmError
from jobs.labels import BatchMeta, label_rows
from jobs.lifecycle import due_unpublished, mark_published, unmark_published
from jobs.manifest import parse_manifest, validate_records
from jobs.manifest_common import JobSpec
from jobs.models import Batch, BatchLabel, Project, utcnow
from jobs.sql import insert_rows

PROJECT_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


@dataclass(frozen=True)
class WorkUnit:
    """One Celery message: job ids that share a batch key, so they can share forward passes."""

    queue: str
    batch_key: str
    job_ids: list[str]
    priority: int = 0  # the best priority among its jobs: the broker's order across queues
    batches: tuple[str, ...] = ()  # the batches its jobs came from, where known

    @property
    def title(self) -> str:
        """What the unit carries, as Flower and `celery inspect` show it in place of the task's
        name: ``generate:aether:128x128 [64 jobs, batch 3f2a9c81]``."""
        jobs = f"{len(self.job_ids)} job{'s' if len(self.job_ids) != 1 else ''}"
        if len(self.batches) == 1:
            return f"{self.batch_key} [{jobs}, batch {self.batches[0][:8]}]"
        if self.batches:
            return f"{self.batch_key} [{jobs}, {len(self.batches)} batches]"
        return f"{self.batch_key} [{jobs}]"


Publisher = Callable[[Sequence[WorkUnit]], None]


class InvalidProject(GenfarmError, ValueError):
    """A project name that is not a safe identifier."""


def check_project(name: str) -> str:
    if not isinstance(name, str) or not PROJECT_RE.fullmatch(name):
        raise InvalidProject(
            f"project {name!r}: expected 1-63 characters of a-z, 0-9, '-' and '_', "
            "starting with a letter or digit")
    return name


def new_id() -> str:
    return uuid.uuid4().hex


_UUID4_CLEAR, _UUID4_SET = ~(0xF000 << 64 | 0xC000 << 48), 4 << 76 | 0x8000 << 48


def new_ids(n: int) -> list[str]:
    """``n`` ids such as :func:`new_id` makes (random UUID4s), from one read of the system's
    random source rather than one each."""
    raw = os.urandom(16 * n)
    return [f"{int.from_bytes(raw[i : i + 16], 'big') & _UUID4_CLEAR | _UUID4_SET:032x}"
            for i in range(0, 16 * n, 16)]


def make_units(jobs: Sequence[tuple[Any, ...]], unit_size: int) -> list[WorkUnit]:
    """Group (id, queue, batch_key[, priority[, batch_id]]) jobs by queue and batch key, in
    order, ``unit_size`` ids a unit; a unit's priority is its best job's."""
    groups: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    for job in jobs:
        members = groups.get((job[1], job[2]))
        if members is None:
            members = groups[job[1], job[2]] = []
        members.append(job)
    units = []
    for (queue, key), members in groups.items():
        for i in range(0, len(members), unit_size):
            part = members[i : i + unit_size]
            units.append(WorkUnit(queue, key, [m[0] for m in part],
                                  max(int(m[3]) if len(m) > 3 else 0 for m in part),
                                  tuple(sorted({str(m[4]) for m in part if len(m) > 4 and m[4]}))))
    return units


@dataclass(frozen=True)
class SubmitResult:
    batch_id: str
    job_count: int
    units: int
    published: bool
    publish_error: str | None = None
    reused: int = 0  # jobs that took the outputs of an identical succeeded job: not published


def submit(
    sessions: sessionmaker[Session], project: str, specs: Sequence[JobSpec], publish: Publisher,
    *, unit_size: int, source: str = "", aging_s: float = 30.0, catalog: Catalog | None = None,
    identity: Callable[[str], Mapping[str, Any]] | None = None, force: bool = False,
    meta: BatchMeta | None = None,
) -> SubmitResult:
    """Record a validated batch in one transaction, then publish its work units.

    Every job is planned (fingerprint, reuse, estimate) before anything is written, so a
    refusal writes nothing; then the rows stream into the database as they are made
    (``jobs.bulk``). Queued jobs are recorded as published when they are inserted, as
    publishing follows the commit at once: there is no UPDATE of every row afterwards. If
    publishing fails the batch is still recorded with every job queued and that mark cleared:
    the reconciler publishes them once the broker is back (should this process die in between,
    after ``republish_after_seconds``, as for a lost message). A job's rank (its claim order) is its
    submission time less its priority times ``aging_s``: it gains a point per ``aging_s``
    seconds it waits. With ``catalog``, each job's estimated device seconds are recorded and
    the project's budget, if it has one, is checked in the same transaction
    (:class:`BudgetExceeded`, nothing written). With ``identity`` too (a model's identity,
    ``jobs.reuse.model_identity``), each job gets its fingerprint, and unless ``force`` a job
    identical to one of the project's succeeded jobs takes that job's outputs instead of running
    (``reused_from``, zero device seconds, no message). ``meta``: the batch's name, labels and
    webhook URL.
    """
    check_project(project)
    meta = (meta or BatchMeta()).checked()
    if not specs:
        raise GenfarmError("a batch needs at least one job")
    source = "".join(ch if ch.isprintable() else "?" for ch in source)[:255]
    batch_id = new_id()
    now = utcnow()
    ids = new_ids(len(specs))
    with sessions.begin() as session:
        found = plan(session, project, specs, catalog, identity, force)
        if catalog is not None:
            check_budget(session, project, sum(found.estimates))
        if session.scalar(select(Project.name).where(Project.name == project)) is None:
            session.add(Project(name=project, created_at=now))
            session.flush()
        session.add(Batch(id=batch_id, project=project, source=source[:255],
                          job_count=len(specs), created_at=now, name=meta.name,
                          webhook_url=meta.webhook_url))
        session.flush()
        insert_rows(session, BatchLabel, label_rows(batch_id, meta.labels))
        queued = write_jobs(session, batch_id, specs, ids, found, now, aging_s)
    units = make_units(queued, unit_size)
    try:
        publish(units)
    except Exception as exc:  # noqa: BLE001 - any broker failure leaves the jobs to the reconciler
        # if this fails too, they are published again after republish_after_s
        with contextlib.suppress(Exception), sessions.begin() as session:
            unmark_published(session, batch_id, now)
        return SubmitResult(batch_id, len(specs), len(units), False,
                            f"{type(exc).__name__}: {exc}", len(found.reused))
    return SubmitResult(batch_id, len(specs), len(units), True, reused=len(found.reused))


@dataclass(frozen=True)
class Submitter:
    """The one submission path (parse, resolve, insert, publish) that the CLI, the API and the
    demo all call, with what it needs made once by the caller."""

    sessions: sessionmaker[Session]
    publish: Publisher
    catalog: Catalog
    objects: Callable[[], Any]  # the storage, opened only when a manifest references it
    unit_size: int = 64
    default_max_attempts: int = 3
    aging_s: float = 30.0  # GENFARM_PRIORITY_AGING_SECONDS
    identity: Callable[[str], Mapping[str, Any]] | None = None  # see jobs.reuse.model_identity

    def parse(self, data: str | bytes, *, format: str = "jsonl", source: str = "manifest",
              project: str | None = None) -> list[JobSpec]:
        """Validate a manifest; with ``project``, batch sources expand to its batches' jobs."""
        return parse_manifest(data, format=format, source=source,
                              default_max_attempts=self.default_max_attempts, catalog=self.catalog,
                              batches=self._batches(project))

    def validate(self, jobs: Sequence[Any], *, source: str = "jobs",
                 project: str | None = None) -> list[JobSpec]:
        """JSON objects (the API's body) as manifest lines 1, 2, ..."""
        return validate_records(((i, job, True) for i, job in enumerate(jobs, 1)), source=source,
                                default_max_attempts=self.default_max_attempts,
                                catalog=self.catalog, batches=self._batches(project))

    def _batches(self, project: str | None) -> Any:
        from jobs.sources import batch_sources

        return None if project is None else batch_sources(self.sessions, check_project(project))

    def resolve(self, project: str, specs: list[JobSpec], source: str) -> list[JobSpec]:
        """Check and fill in sources given by job id or storage key, inside ``project``."""
        from jobs.sources import resolve_sources

        check_project(project)
        with self.sessions() as session:
            return resolve_sources(specs, session, project, _Lazy(self.objects), self.catalog,
                                   source)

    def submit(self, project: str, specs: list[JobSpec], *, source: str = "",
               force: bool = False, meta: BatchMeta | None = None) -> SubmitResult:
        """Resolve, record and publish; ``force`` runs jobs identical to succeeded ones again
        instead of reusing their outputs; ``meta``: the batch's name, labels, webhook URL."""
        meta = (meta or BatchMeta()).checked()  # before any work: a bad label costs nothing
        specs = self.resolve(project, specs, source or "manifest")
        result = submit(self.sessions, project, specs, self.publish, unit_size=self.unit_size,
                        source=source, aging_s=self.aging_s, catalog=self.catalog,
                        identity=self.identity, force=force, meta=meta)
        if result.reused == result.job_count:  # nothing to run: finished now
            from jobs.batches import finalize_if_done

            finalize_if_done(self.sessions, self.objects(), result.batch_id)
        return result

    def submit_manifest(self, project: str, data: str | bytes, *, format: str = "jsonl",
                        source: str = "manifest", force: bool = False,
                        meta: BatchMeta | None = None) -> SubmitResult:
        check_project(project)
        meta = (meta or BatchMeta()).checked()
        return self.submit(project, self.parse(data, format=format, source=source,
                                               project=project),
                           source=source, force=force, meta=meta)


class _Lazy:
    """Storage opened on first use: most manifests reference nothing in it."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory, self.store = factory, None

    def _get(self) -> Any:
        if self.store is None:
            self.store = self.factory()
        return self.store

    @property
    def prefix(self) -> str:
        return str(self._get().prefix)

    def exists(self, key: str) -> bool:
        return bool(self._get().exists(key))

    def get(self, key: str, sha256: str | None = None) -> bytes:
        return bytes(self._get().get(key, sha256=sha256))

    def read_head(self, key: str, size: int) -> bytes:
        return bytes(self._get().read_head(key, size))


def publish_jobs(sessions: sessionmaker[Session], publish: Publisher,
                 jobs: Sequence[tuple[Any, ...]], unit_size: int) -> None:
    """Publish (id, queue, batch_key[, priority[, batch_id]]) jobs as work units, then mark them
    published."""
    publish(make_units(jobs, unit_size))
    with sessions.begin() as session:
        mark_published(session, [j[0] for j in jobs])


def publish_due(sessions: sessionmaker[Session], publish: Publisher, *, unit_size: int,
                republish_after_s: float, limit: int = 50_000) -> int:
    """Publish queued jobs that have no live message (never published, lost, or due after a backoff)."""
    with sessions() as session:
        due = due_unpublished(session, republish_after_s, limit)
    if due:
        publish_jobs(sessions, publish, due, unit_size)
    return len(due)


def retry_failed_jobs(sessions: sessionmaker[Session], publish: Publisher, job_filter: Any,
                      batch_ids: Sequence[str], extra_attempts: int, *, unit_size: int,
                      republish_after_s: float) -> int:
    """failed -> queued for the jobs ``job_filter`` selects, their batches reopened, published."""
    with sessions.begin() as session:
        n = lifecycle.retry_failed(session, job_filter, extra_attempts)
        if n:
            for batch_id in batch_ids:
                reopen(session, batch_id)
    if n:
        publish_due(sessions, publish, unit_size=unit_size, republish_after_s=republish_after_s)
    return n


def pause_jobs(sessions: sessionmaker[Session], job_filter: Any) -> int:
    """queued -> paused for the jobs ``job_filter`` selects; running ones finish."""
    with sessions.begin() as session:
        return lifecycle.pause(session, job_filter)


def resume_jobs(sessions: sessionmaker[Session], publish: Publisher, job_filter: Any, *,
                unit_size: int) -> int:
    """paused -> queued for the jobs ``job_filter`` selects, published at once (if the broker
    is down, the reconciler publishes them when it is back)."""
    with sessions.begin() as session:
        resumed = lifecycle.resume(session, job_filter)
    if resumed:
        with contextlib.suppress(Exception):  # noqa: BLE001 - the reconciler publishes them
            publish_jobs(sessions, publish, resumed, unit_size)
    return len(resumed)
