"""A validated batch's jobs written in bulk: every job planned first (fingerprint, reuse,
estimate: what a budget refusal needs, before anything is written), then its rows made one at a
time as they stream into the database (one COPY on PostgreSQL, chunks on SQLite), so what a
submission holds beside its validated specs stays flat in the manifest's size. Torch-free."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from jobs.catalog import Catalog
from jobs.manifest_common import JobSpec
from jobs.manifest_fields import own_path
from jobs.models import Job, JobEvent, Output
from jobs.sql import insert_rows, insert_values

CHUNK = 5_000  # rows per statement where there is no COPY (SQLite), reused jobs at a time
COLUMNS = ("id", "batch_id", "index", "line", "kind", "model", "queue", "params", "batch_key",
           "status", "priority", "rank", "attempt", "max_attempts", "created_at", "published_at",
           "started_at", "finished_at", "progress", "device_seconds", "estimate_seconds",
           "fingerprint", "reused_from", "waits_on")


@dataclass
class Plan:
    """What is decided for each job before anything is written; empty lists where not asked."""

    fingerprints: list[str | None] = field(default_factory=list)
    reused: dict[int, str] = field(default_factory=dict)  # job -> the one whose outputs it takes
    estimates: list[float] = field(default_factory=list)  # device seconds, 0 for a reused job


def plan(session: Session, project: str, specs: Sequence[JobSpec], catalog: Catalog | None,
         identity: Callable[[str], Mapping[str, Any]] | None, force: bool) -> Plan:
    """Fingerprints (with ``catalog`` and ``identity``), the jobs that reuse a succeeded job of
    ``project`` (unless ``force``) and estimates (with ``catalog``)."""
    from jobs.estimates import job_cost, rates
    from jobs.reuse import fingerprints, reusable

    found = Plan()
    if catalog is None:
        return found
    if identity is not None:
        found.fingerprints = fingerprints(catalog, identity, ((s.kind, s.params) for s in specs))
        if not force:
            hits = reusable(session, project, (f for f in found.fingerprints if f))
            found.reused = {i: hits[f] for i, f in enumerate(found.fingerprints)
                            if f in hits} if hits else {}
    reused = found.reused
    keys = {(spec.batch_key, spec.kind, spec.params.get("model", ""))
            for i, spec in enumerate(specs) if i not in reused}
    rate = {key: seconds for key, (seconds, _) in rates(session, catalog, keys).items()}
    for i, spec in enumerate(specs):
        seconds = rate.get(spec.batch_key) if i not in reused else None
        found.estimates.append(0.0 if seconds is None
                               else seconds * job_cost(catalog, spec.kind, spec.params))
    return found


def write_jobs(session: Session, batch_id: str, specs: Sequence[JobSpec], ids: Sequence[str],
               found: Plan, now: datetime, aging_s: float) -> list[tuple[str, str, str, int, str]]:
    """Insert the batch's jobs, each row made as it is sent, then the outputs and events of those
    that reuse another's; returns the queued ones as (id, queue, batch_key, priority, batch_id),
    to publish. They are recorded as published now: publishing follows the commit at once (if
    it fails, the caller clears that, so the reconciler publishes them at its next pass)."""
    queued: list[tuple[str, str, str, int, str]] = []
    insert_values(session, Job, COLUMNS, _rows(batch_id, specs, ids, found, now, aging_s, queued),
                  CHUNK)
    if found.reused:
        _record_reuse(session, [(ids[i], original) for i, original in found.reused.items()], now)
    return queued


def _status(spec: JobSpec, original: str | None) -> str:
    """A job that takes another's outputs has succeeded; one that waits is published when its
    parents succeed."""
    if original is not None:
        return "succeeded"
    return "waiting" if spec.after or spec.after_batches else "queued"


def _rows(batch_id: str, specs: Sequence[JobSpec], ids: Sequence[str], found: Plan,
          now: datetime, aging_s: float, queued: list[tuple[str, str, str, int, str]]
          ) -> Iterator[tuple[Any, ...]]:
    """Each job's row, in the order of ``COLUMNS``; the queued ones are added to ``queued``."""
    rank: dict[int, float] = {}  # by priority: submission time less priority x aging
    epoch = now.timestamp()
    estimates, prints = found.estimates, found.fingerprints
    for index, spec in enumerate(specs):
        job_id = ids[index]
        params = spec.params
        if spec.refs:  # {"line": N} references: name the referenced job by its id
            params = copy.copy(params)
            for path, position in spec.refs:
                own_path(params, path)["job"] = ids[position]
        original = found.reused.get(index)
        status = _status(spec, original)
        done = now if original is not None else None
        waits_on = ([{"batch": batch_id, "line": n} for n in spec.after]
                    + [{"batch": b} for b in spec.after_batches]
                    if spec.after or spec.after_batches else None)
        priority = spec.priority
        if priority not in rank:
            rank[priority] = epoch - priority * aging_s
        if status == "queued":
            queued.append((job_id, spec.queue, spec.batch_key, priority, batch_id))
        yield (job_id, batch_id, index, spec.line, spec.kind, params.get("model", ""),
               spec.queue, params, spec.batch_key, status, priority, rank[priority], 0,
               spec.max_attempts, now, now if status == "queued" else None, done, done,
               1.0 if done else 0.0, 0.0, estimates[index] if estimates else 0.0,
               prints[index] if prints else None, original, waits_on)


def _record_reuse(session: Session, reusing: list[tuple[str, str]], now: datetime) -> None:
    """The outputs (the same keys and checksums) and the event of each job that reuses another's,
    a chunk at a time."""
    from jobs.reuse import outputs_of

    for start in range(0, len(reusing), CHUNK):
        part = reusing[start : start + CHUNK]
        originals = outputs_of(session, (original for _, original in part))
        insert_rows(session, Output, [
            {"job_id": job_id, "name": o.name, "key": o.key, "sha256": o.sha256,
             "bytes": o.bytes, "content_type": o.content_type, "created_at": now}
            for job_id, original in part for o in originals.get(original, [])])
        insert_rows(session, JobEvent, [
            {"job_id": job_id, "at": now, "from_status": None, "to_status": "succeeded",
             "attempt": 0, "reason": f"reused the outputs of job {original}"[:255],
             "worker": None} for job_id, original in part])
