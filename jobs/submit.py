"""Submission: one transaction for the batch and all its jobs, then work units published after commit."""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from jobs.errors import GenfarmError
from jobs.lifecycle import due_unpublished, insert_rows, mark_published
from jobs.manifest import JobSpec
from jobs.models import Batch, Job, Project, utcnow

PROJECT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class WorkUnit:
    """One Celery message: job ids that share a batch key, so they can share forward passes."""

    queue: str
    batch_key: str
    job_ids: list[str]


Publisher = Callable[[Sequence[WorkUnit]], None]


class InvalidProject(GenfarmError, ValueError):
    """A project name that is not a safe identifier."""


def check_project(name: str) -> str:
    if not PROJECT_RE.match(name or ""):
        raise InvalidProject(
            f"project {name!r}: expected 1-63 characters of a-z, 0-9, '-' and '_', "
            "starting with a letter or digit")
    return name


def new_id() -> str:
    return uuid.uuid4().hex


def make_units(jobs: Sequence[tuple[str, str, str]], unit_size: int) -> list[WorkUnit]:
    """Group (id, queue, batch_key) triples by queue and batch key, in order, ``unit_size`` ids a unit."""
    groups: dict[tuple[str, str], list[str]] = {}
    for job_id, queue, key in jobs:
        groups.setdefault((queue, key), []).append(job_id)
    units = []
    for (queue, key), ids in groups.items():
        for i in range(0, len(ids), unit_size):
            units.append(WorkUnit(queue, key, ids[i : i + unit_size]))
    return units


@dataclass(frozen=True)
class SubmitResult:
    batch_id: str
    job_count: int
    units: int
    published: bool
    publish_error: str | None = None


def submit(
    sessions: sessionmaker[Session], project: str, specs: Sequence[JobSpec], publish: Publisher,
    *, unit_size: int, source: str = "",
) -> SubmitResult:
    """Record a validated batch in one transaction, then publish its work units.

    If publishing fails the batch is still recorded with every job queued; the
    reconciler publishes them once the broker is back.
    """
    check_project(project)
    if not specs:
        raise GenfarmError("a batch needs at least one job")
    batch_id = new_id()
    now = utcnow()
    rows: list[dict[str, Any]] = []
    triples: list[tuple[str, str, str]] = []
    ids = [new_id() for _ in specs]
    for index, (job_id, spec) in enumerate(zip(ids, specs, strict=True)):
        params = spec.params
        if spec.refs:  # {"line": N} references: name the referenced job by its id
            params = copy.deepcopy(params)
            for path, position in spec.refs:
                node: Any = params
                for part in path.split("."):
                    node = node[int(part)] if part.isdigit() else node[part]
                node["job"] = ids[position]
        rows.append({
            "id": job_id, "batch_id": batch_id, "index": index, "kind": spec.kind,
            "params": params, "batch_key": spec.batch_key, "status": "queued",
            "priority": spec.priority, "attempt": 0, "max_attempts": spec.max_attempts,
            "created_at": now, "device_seconds": 0.0,
        })
        triples.append((job_id, spec.queue, spec.batch_key))
    with sessions.begin() as session:
        if session.scalar(select(Project.name).where(Project.name == project)) is None:
            session.add(Project(name=project, created_at=now))
            session.flush()
        session.add(Batch(id=batch_id, project=project, source=source[:255],
                          job_count=len(rows), created_at=now))
        session.flush()
        insert_rows(session, Job, rows)
    units = make_units(triples, unit_size)
    try:
        publish(units)
    except Exception as exc:  # noqa: BLE001 - any broker failure leaves the jobs to the reconciler
        return SubmitResult(batch_id, len(rows), len(units), False, f"{type(exc).__name__}: {exc}")
    with sessions.begin() as session:
        mark_published(session, [t[0] for t in triples])
    return SubmitResult(batch_id, len(rows), len(units), True)


def publish_due(sessions: sessionmaker[Session], publish: Publisher, *, unit_size: int,
                republish_after_s: float, queue_of: Callable[[str], str], limit: int = 50_000) -> int:
    """Publish queued jobs that have no live message (never published, lost, or due after a backoff)."""
    with sessions() as session:
        due = due_unpublished(session, republish_after_s, limit)
    if not due:
        return 0
    publish(make_units([(j, queue_of(kind), key) for j, kind, key in due], unit_size))
    with sessions.begin() as session:
        mark_published(session, [d[0] for d in due])
    return len(due)
