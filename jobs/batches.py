"""Batch queries and finalization: counts per state, id lookup, the manifest of a finished batch."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from jobs.errors import AmbiguousId, NotFound
from jobs.labels import labels_of, where_batch
from jobs.lifecycle import count_by_status
from jobs.models import Batch, Job, Output, utcnow
from jobs.sql import one_of
from jobs.states import TERMINAL, BatchStatus, JobStatus


class ManifestWriter(Protocol):
    def write_batch_manifest(self, project: str, batch_id: str, body: bytes) -> str: ...


@dataclass
class BatchSummary:
    id: str
    project: str
    status: str
    source: str
    job_count: int
    counts: dict[str, int]
    device_seconds: float
    created_at: datetime
    finished_at: datetime | None
    manifest_key: str | None
    running_progress: float = 0.0  # summed progress of the running jobs
    reused: int = 0  # succeeded jobs that took an identical earlier job's outputs
    name: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    started_at: datetime | None = None  # when its first job started

    def age_seconds(self, now: datetime) -> float:
        return max(0.0, (now - self.created_at).total_seconds())

    def elapsed_seconds(self, now: datetime) -> float:
        """From its first job's start to its end (or now): 0 while nothing started."""
        if self.started_at is None:
            return 0.0
        return max(0.0, ((self.finished_at or now) - self.started_at).total_seconds())

    @property
    def done(self) -> int:
        return sum(self.counts.get(s, 0) for s in TERMINAL)

    @property
    def progress(self) -> float:
        """Finished jobs plus the running ones' reported share, over all jobs."""
        return min(1.0, (self.done + self.running_progress) / self.job_count) if self.job_count else 1.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "project": self.project, "status": self.status, "source": self.source,
            "jobs": self.job_count, "done": self.done,
            "counts": {s.value: self.counts.get(s.value, 0) for s in JobStatus},
            "device_seconds": round(self.device_seconds, 3),
            "progress": round(self.progress, 4),
            "created_at": self.created_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "manifest_key": self.manifest_key, "reused": self.reused,
            "name": self.name, "labels": dict(self.labels),
            "started_at": self.started_at.isoformat() if self.started_at else None,
        }


PREFIX_MIN = 6  # characters of an id that may stand for it
_SHOWN = 3  # matches named when a prefix is ambiguous


def resolve_batch(session: Session, id_or_prefix: str, project: str | None = None) -> Batch:
    """A batch by its id or a unique prefix of at least 6 characters (optionally within a project)."""
    found = resolve_id(session, id_or_prefix, (Batch,), project)
    assert isinstance(found, Batch)
    return found


def resolve_target(session: Session, id_or_prefix: str, project: str | None = None) -> Batch | Job:
    """A batch or a single job by id or unique prefix: what cancel and retry act on."""
    return resolve_id(session, id_or_prefix, (Batch, Job), project)


def resolve_id(session: Session, id_or_prefix: str, models: tuple[type[Batch | Job], ...],
               project: str | None = None) -> Batch | Job:
    """The one row of ``models`` whose id is ``id_or_prefix`` or starts with it (6+ letters and
    digits). A whole id wins over prefixes; a prefix that fits rows of several batches or jobs
    is :class:`AmbiguousId` naming some of them, one that fits none is :class:`NotFound`."""
    for model in models:
        exact = session.scalar(_visible(model, project).where(model.id == id_or_prefix))
        if exact is not None:
            return exact
    found: list[Batch | Job] = []
    if len(id_or_prefix) >= PREFIX_MIN and id_or_prefix.isascii() and id_or_prefix.isalnum():
        for model in models:  # alphanumeric: no LIKE wildcards to escape
            found += session.scalars(_visible(model, project).where(model.id.startswith(id_or_prefix))
                                     .order_by(model.id).limit(_SHOWN + 1)).all()
    what = " or ".join(_NOUN[m] for m in models)
    if not found:
        raise NotFound(f"no {what} {id_or_prefix!r}")
    if len(found) > 1:
        shown = ", ".join(f"{_NOUN[type(r)]} {r.id}" for r in found[:_SHOWN])
        raise AmbiguousId(f"{what} prefix {id_or_prefix!r} matches several: {shown}"
                          f"{', ...' if len(found) > _SHOWN else ''}; give more characters")
    return found[0]


_NOUN: dict[type, str] = {Batch: "batch", Job: "job"}


def _visible(model: type[Batch | Job], project: str | None) -> Any:
    stmt = select(model)
    if project is None:
        return stmt
    if model is Batch:
        return stmt.where(Batch.project == project)
    return stmt.join(Batch, Batch.id == Job.batch_id).where(Batch.project == project)


def summarize(session: Session, batch: Batch) -> BatchSummary:
    seconds, started = session.execute(
        select(func.coalesce(func.sum(Job.device_seconds), 0.0), func.min(Job.started_at))
        .where(Job.batch_id == batch.id)).one()
    running = session.scalar(select(func.coalesce(func.sum(Job.progress), 0.0)).where(
        Job.batch_id == batch.id, Job.status == JobStatus.RUNNING))
    counts = count_by_status(session, batch.id)
    reused = session.scalar(select(func.count()).where(
        Job.batch_id == batch.id, Job.reused_from.is_not(None))) if counts.get(
        JobStatus.SUCCEEDED) else 0
    status = batch.status
    if (status == BatchStatus.ACTIVE and counts.get(JobStatus.PAUSED)
            and not counts.get(JobStatus.QUEUED) and not counts.get(JobStatus.RUNNING)):
        status = "paused"  # shown, not stored: what is left of it waits for `genfarm resume`
    return BatchSummary(batch.id, batch.project, status, batch.source, batch.job_count,
                        counts, float(seconds or 0.0),
                        batch.created_at, batch.finished_at, batch.manifest_key,
                        float(running or 0.0), int(reused or 0), batch.name,
                        labels_of(session, [batch.id])[batch.id], _utc(started))


def _utc(value: datetime | None) -> datetime | None:
    """An aggregate's datetime: SQLite returns it naive (or as text), PostgreSQL aware."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def list_batches(session: Session, project: str | None = None, limit: int = 20, *,
                 name: str | None = None, labels: Mapping[str, str] | None = None
                 ) -> list[Batch]:
    """The newest batches (of a project; of this name; carrying all these labels)."""
    stmt = where_batch(select(Batch), name, labels).order_by(Batch.created_at.desc()).limit(limit)
    if project is not None:
        stmt = stmt.where(Batch.project == project)
    return list(session.scalars(stmt))


def batch_outputs(session: Session, batch_id: str) -> list[tuple[str, int, Output]]:
    """(job id, job index, output) for every recorded output of a batch, in manifest order."""
    rows = session.execute(
        select(Job.id, Job.index, Output).join(Output, Output.job_id == Job.id)
        .where(Job.batch_id == batch_id).order_by(Job.index, Output.name)
    ).all()
    return [(r[0], r[1], r[2]) for r in rows]


def manifest_lines(session: Session, batch_id: str) -> bytes:
    """The batch manifest: one JSON line per job with params, status, outputs and checksums."""
    return _manifest(session, batch_id)[0]


def _manifest(session: Session, batch_id: str) -> tuple[bytes, dict[str, int]]:
    """The manifest and the jobs per state, from one query (jobs joined to their outputs), as
    plain rows: a batch of 100,000 jobs is no 200,000 ORM objects."""
    rows = session.execute(
        select(Job.id, Job.index, Job.kind, Job.params, Job.status, Job.attempt, Job.error,
               Job.device_seconds, Job.reused_from, Output.name, Output.key, Output.sha256,
               Output.bytes, Output.content_type)
        .outerjoin(Output, Output.job_id == Job.id)
        .where(Job.batch_id == batch_id).order_by(Job.index, Output.name))
    lines: list[str] = []
    counts: dict[str, int] = {}
    dumps = json.JSONEncoder(sort_keys=True).encode
    job: dict[str, Any] | None = None
    for (job_id, index, kind, params, status, attempt, error, device_seconds, reused_from,
         name, key, sha256, size, content_type) in rows:
        if job is None or job["job_id"] != job_id:
            if job is not None:
                lines.append(dumps(job))
            status = str(status)
            counts[status] = counts.get(status, 0) + 1
            job = {"job_id": job_id, "index": index, "kind": kind, "params": params,
                   "status": status, "attempts": attempt, "error": error,
                   "device_seconds": round(device_seconds, 4), "outputs": [],
                   "reused_from": reused_from}
        if name is not None:
            job["outputs"].append({"name": name, "key": key, "sha256": sha256, "bytes": size,
                                   "content_type": content_type})
    if job is not None:
        lines.append(dumps(job))
    return ("\n".join(lines) + "\n").encode(), counts


def _left() -> Any:
    """A job not finished, named by its statuses: with the batch, the index of batch and
    status leads straight to such jobs. Named by the finished ones it was a filter, and with the
    planner counting a batch's jobs by the average batch (or by statistics taken while one batch
    held them all), a scan of the table from its start looked as cheap a way to the first."""
    return Job.status.in_(sorted(set(JobStatus) - TERMINAL))


@functools.cache
def _done_stmt(dialect: str) -> Any:
    """Which batches of p_ids are open with no job left, with their projects: one statement for
    them all, each batch's jobs asked for one left by the index of batch and status (a scalar
    subquery runs per batch, where an anti-join could be planned as a scan of every unfinished
    job). Built once (every finished unit asks)."""
    left = (select(Job.id).where(Job.batch_id == Batch.id, _left())
            .limit(1).correlate(Batch).scalar_subquery())
    return select(Batch.id, Batch.project).where(
        one_of(Batch.id, "p_ids", dialect), Batch.finished_at.is_(None), left.is_(None))


def _done(session: Session, batch_ids: list[str]) -> dict[str, str]:
    """Those of ``batch_ids`` open with every job finished: batch id -> project."""
    conn = session.connection()
    done: dict[str, str] = {}
    for part in range(0, len(batch_ids), 1000):  # a parameter each on SQLite
        rows = conn.execute(_done_stmt(conn.dialect.name), {"p_ids": batch_ids[part : part + 1000]})
        done.update((batch, project) for batch, project in rows)
    return done


def done_batches(session: Session, batch_ids: Iterable[str]) -> list[str]:
    """Those of ``batch_ids`` that are open with every job finished: to finalize (in the order
    given)."""
    ids = list(batch_ids)
    if not ids:
        return []
    done = _done(session, ids)
    return [b for b in ids if b in done]


def finalize_if_done(session_factory: Any, writer: ManifestWriter, batch_id: str) -> str | None:
    """If every job of the batch is finished, write its manifest and close it; returns the new status."""
    with session_factory() as session:
        project = _done(session, [batch_id]).get(batch_id)
        if project is None:
            return None
        body, counts = _manifest(session, batch_id)
    if counts.get(JobStatus.CANCELLED, 0):
        status = BatchStatus.CANCELLED
    elif counts.get(JobStatus.FAILED, 0):
        status = BatchStatus.FAILED
    else:
        status = BatchStatus.SUCCEEDED
    key = writer.write_batch_manifest(project, batch_id, body)
    with session_factory.begin() as session:
        batch = session.scalar(
            update(Batch).where(Batch.id == batch_id, Batch.finished_at.is_(None))
            .values(status=status, finished_at=utcnow(), manifest_key=key).returning(Batch)
            .execution_options(synchronize_session=False))
        if batch is not None:  # this call finished it: one webhook delivery, in the same transaction
            from jobs.webhooks import enqueue_finished  # (jobs.webhooks imports this module)

            enqueue_finished(session, batch)
    return status.value if batch is not None else None


def open_batches(session: Session, limit: int = 1000) -> list[str]:
    return list(session.scalars(
        select(Batch.id).where(Batch.finished_at.is_(None)).order_by(Batch.created_at).limit(limit)))


def cancel_jobs(session_factory: Any, writer: ManifestWriter, job_filter: Any,
                batch_ids: list[str]) -> int:
    """Cancel the jobs ``job_filter`` selects and close their batches if nothing is left."""
    from jobs import lifecycle

    with session_factory.begin() as session:
        n = lifecycle.cancel(session, job_filter)
    for batch_id in batch_ids:
        finalize_if_done(session_factory, writer, batch_id)
    return n


def reopen(session: Session, batch_id: str) -> None:
    """A finished batch that gets work again (a retry) is active until it finishes anew."""
    session.execute(update(Batch).where(Batch.id == batch_id)
                    .values(status=BatchStatus.ACTIVE, finished_at=None)
                    .execution_options(synchronize_session=False))
