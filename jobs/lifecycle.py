"""The job state machine: every transition is one conditional UPDATE plus an event row.

A transition names the state it expects (and, for running jobs, the lease owner,
which is unique per claim and so also pins the attempt); rows that no longer
match are left alone. That is what makes redelivered messages, racing workers
and late writers from an expired lease harmless.

A job has a lease owner exactly while it runs: a claim sets it and every move out
of running clears it. So the owner alone guards a worker's updates of the jobs it
holds, which then find their rows by primary key whatever the planner believes of
the statuses (statistics taken while the farm sat idle say nothing runs).
"""

from __future__ import annotations

import functools
import json
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ARRAY,
    Float,
    Integer,
    String,
    and_,
    bindparam,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import Grouping

from jobs.models import Job, JobEvent, Output, UTCDateTime, job_status_is, utcnow
from jobs.sql import insert_rows, none_of, one_of, rowcount
from jobs.states import JobStatus

# Retry backoff: base * 2**(attempt-1), capped, with full jitter.
BACKOFF_BASE_S = 2.0
BACKOFF_CAP_S = 300.0


@dataclass(frozen=True)
class ClaimedJob:
    id: str
    batch_id: str
    kind: str
    params: dict[str, Any]
    batch_key: str
    attempt: int
    max_attempts: int
    model: str = ""
    queue: str = ""


@dataclass
class OutputRecord:
    name: str
    key: str
    sha256: str
    bytes: int
    content_type: str


@dataclass
class JobResult:
    """What a worker reports for one claimed job."""

    job_id: str
    outputs: list[OutputRecord] = field(default_factory=list)
    device_seconds: float = 0.0
    error: str | None = None
    retryable: bool = False


def _events(rows: Iterable[tuple[str, int]], from_status: JobStatus | None, to_status: JobStatus,
            reason: str, worker: str | None, now: datetime) -> list[dict[str, Any]]:
    return [
        {"job_id": job_id, "at": now, "from_status": from_status, "to_status": to_status,
         "attempt": attempt, "reason": reason[:255], "worker": worker}
        for job_id, attempt in rows
    ]


def _log(session: Session, events: list[dict[str, Any]]) -> None:
    insert_rows(session, JobEvent, events)


def _moving(dialect: str, stmt: Any, from_status: JobStatus | None, to_status: JobStatus,
            *columns: Any) -> Any:
    """``stmt``, a conditional ``UPDATE jobs``, returning (id, attempt, *columns) of the rows it
    moves; on PostgreSQL it also writes their event rows (a data-modifying CTE), so a transition
    costs one round trip. The events' time, reason and worker are the parameters ev_at,
    ev_reason and ev_worker (see :func:`_run_move`)."""
    stmt = stmt.returning(Job.id, Job.attempt, *columns)
    if dialect != "postgresql":
        return stmt
    moved = stmt.cte("moved")
    logged = insert(JobEvent).from_select(
        ["job_id", "at", "from_status", "to_status", "attempt", "reason", "worker"],
        select(moved.c.id, bindparam("ev_at", type_=UTCDateTime()),
               literal(from_status, String()), literal(to_status.value, String()),
               moved.c.attempt, bindparam("ev_reason", type_=String()),
               bindparam("ev_worker", type_=String())),
    ).cte("logged")
    return select(moved).add_cte(logged)


def _run_move(session: Session, stmt: Any, params: dict[str, Any], from_status: JobStatus | None,
              to_status: JobStatus, reason: str, worker: str | None, now: datetime) -> list[Any]:
    """Run a statement :func:`_moving` made, with ``params``; the rows it moved, each with its
    event logged."""
    conn = session.connection()
    if conn.dialect.name != "postgresql":
        rows = list(conn.execute(stmt, params).all())
        _log(session, _events(((r[0], r[1]) for r in rows), from_status, to_status, reason,
                              worker, now))
        return rows
    return list(conn.execute(stmt, {**params, "ev_at": now, "ev_reason": reason[:255],
                                    "ev_worker": worker}).all())


def _move(session: Session, stmt: Any, from_status: JobStatus | None, to_status: JobStatus,
          reason: str, worker: str | None, now: datetime, *columns: Any) -> list[Any]:
    """Run a conditional ``UPDATE jobs`` and log one event per row it moved; returns those rows
    as (id, attempt, *columns). For statements made per call (the worker's own transitions are
    built once: see the ``_*_stmt`` builders)."""
    session.flush()  # the statement runs on the connection, past the ORM: pending rows first
    dialect = session.get_bind().dialect.name
    return _run_move(session, _moving(dialect, stmt, from_status, to_status, *columns), {},
                     from_status, to_status, reason, worker, now)


_CLAIM_COLUMNS = (Job.batch_id, Job.kind, Job.params, Job.batch_key, Job.max_attempts,
                  Job.model, Job.queue)


def _due(now: Any) -> Any:
    """Not held back by a retry's backoff at ``now`` (a time, or the parameter of one)."""
    return or_(Job.not_before.is_(None), Job.not_before <= now)


def _p_now() -> Any:
    return bindparam("p_now", type_=UTCDateTime())


@functools.cache
def _best_key_stmt(dialect: str) -> Any:
    """The batch key of the best-ranked queued, due job of the queue p_queue, keys in p_done
    left out."""
    return (select(Job.batch_key)
            .where(job_status_is(JobStatus.QUEUED), Job.queue == bindparam("p_queue", type_=String()),
                   none_of(Job.batch_key, "p_done", dialect), _due(_p_now()))
            .order_by(Job.rank, Job.index).limit(1))


@functools.cache
def _claim_stmt(dialect: str, which: str) -> Any:
    """queued -> running for the queued, due jobs ``which`` names: "ids", those of p_ids; "key",
    up to p_limit of the batch key p_key, best rank first; "best", the same of the best key of
    the queue p_queue (see :func:`_best_key_stmt`). On PostgreSQL a pick skips the jobs other
    claims in flight hold."""
    if which == "ids":
        # the ids name the rows (the primary key); the status is checked on each, in a form no
        # index answers (a partial index of every queued job looked as cheap a way in)
        target = and_(one_of(Job.id, "p_ids", dialect),
                      func.coalesce(Job.status, "") == JobStatus.QUEUED.value, _due(_p_now()))
    else:
        key = (bindparam("p_key", type_=String()) if which == "key"
               else _best_key_stmt(dialect).scalar_subquery())
        pick = (select(Job.id).where(job_status_is(JobStatus.QUEUED), Job.batch_key == key,
                                          _due(_p_now()))
                .order_by(Job.rank, Job.index).limit(bindparam("p_limit", type_=Integer())))
        if dialect == "postgresql":
            # materialized: the pick (and its row locks) happens once, whatever plan the
            # UPDATE gets
            picked = pick.with_for_update(skip_locked=True).cte("pick").prefix_with("MATERIALIZED")
            pick = select(picked.c.id)
        # the pick's own conditions are the guard: it locks the rows it finds queued and due
        # (SQLite runs the statement alone), so nothing moves them before this update; given
        # only their ids, the planner finds them by the primary key (a status condition here
        # let statistics taken while nothing was queued drive the update from every queued
        # job, 40 ms a claim of 3,000)
        target = Job.id.in_(pick)
    stmt = (update(Job).where(target)
            .values(status=JobStatus.RUNNING, attempt=Job.attempt + 1,
                    lease_owner=bindparam("p_owner", type_=String()),
                    lease_expires_at=bindparam("p_expires", type_=UTCDateTime()),
                    started_at=_p_now(), error=None))
    return _moving(dialect, stmt, JobStatus.QUEUED, JobStatus.RUNNING, *_CLAIM_COLUMNS)


def _claim(session: Session, which: str, params: dict[str, Any], owner: str,
           lease_seconds: float, now: datetime) -> list[ClaimedJob]:
    stmt = _claim_stmt(session.get_bind().dialect.name, which)
    params.update(p_now=now, p_owner=owner, p_expires=now + timedelta(seconds=lease_seconds))
    rows = _run_move(session, stmt, params, JobStatus.QUEUED, JobStatus.RUNNING, "claimed",
                     owner, now)
    return [ClaimedJob(r[0], r[2], r[3], r[4], r[5], r[1], r[6], r[7], r[8]) for r in rows]


def claim(session: Session, job_ids: Sequence[str], owner: str, lease_seconds: float,
          now: datetime | None = None) -> list[ClaimedJob]:
    """queued -> running for those of ``job_ids`` that are still queued and due; the rest are skipped."""
    if not job_ids:
        return []
    return _claim(session, "ids", {"p_ids": list(job_ids)}, owner, lease_seconds,
                  now or utcnow())


def claim_next(session: Session, queue: str, limit: int, owner: str, lease_seconds: float,
               now: datetime | None = None) -> list[ClaimedJob]:
    """Claim up to ``limit`` of the best-ranked queued jobs of ``queue``, whichever batch they
    are in, a batch key at a time (the best job's first, so they share passes): a work unit's
    message stands for a unit's worth of work on its queue, not for its own ids. So a
    higher-priority job starts at the next unit, a unit whose own jobs were cancelled or claimed
    runs others instead, and every message takes its whole worth while work is left (the
    messages of a queue always add up to its jobs).

    Each key is claimed by one statement that finds the best key, picks its jobs and moves
    them (a worker's claim is a round trip, not three); only when that finds nothing to take
    (no work left, or the best key's jobs all locked by other claims in flight) is the key
    looked up on its own, to step past it."""
    now = now or utcnow()
    claimed: list[ClaimedJob] = []
    done: list[str] = []  # keys taken to the last job
    while len(claimed) < limit:
        got = _claim(session, "best", {"p_queue": queue, "p_done": done,
                                       "p_limit": limit - len(claimed)},
                     owner, lease_seconds, now)
        if got:
            key = got[0].batch_key
        else:
            found = session.connection().execute(
                _best_key_stmt(session.get_bind().dialect.name),
                {"p_queue": queue, "p_done": done, "p_now": now}).scalar()
            if found is None:
                break
            key = found
            got = fill(session, key, limit - len(claimed), owner, lease_seconds, now)
        claimed += got
        done.append(key)
    return claimed


def fill(session: Session, batch_key: str, limit: int, owner: str, lease_seconds: float,
         now: datetime | None = None) -> list[ClaimedJob]:
    """Claim up to ``limit`` more queued jobs of ``batch_key``, from any batch (best rank first)."""
    if limit <= 0:
        return []
    return _claim(session, "key", {"p_key": batch_key, "p_limit": limit}, owner, lease_seconds,
                  now or utcnow())


def set_progress(session: Session, owner: str, job_id: str, progress: float) -> bool:
    """Record how far a long job got; only its lease holder may. False if it no longer holds it."""
    return rowcount(session.execute(
        update(Job).where(Job.id == job_id, Job.lease_owner == owner,
                          Job.status == JobStatus.RUNNING)
        .values(progress=max(0.0, min(1.0, progress)))
        .execution_options(synchronize_session=False))) == 1


@functools.cache
def _heartbeat_stmt(dialect: str) -> Any:
    # by the unit's ids, the primary key: given only its owner, the way in was every running
    # job (36 ms a beat with 96,000 running), and an index by owner would cost every claim a
    # write. The owner is the guard: a job has one only while it runs
    return (update(Job).where(one_of(Job.id, "p_ids", dialect),
                              Job.lease_owner == bindparam("p_owner", type_=String()))
            .values(lease_expires_at=bindparam("p_expires", type_=UTCDateTime()))
            .execution_options(synchronize_session=False))


def heartbeat(session: Session, owner: str, job_ids: Sequence[str], lease_seconds: float,
              now: datetime | None = None) -> int:
    """Extend the leases of the jobs of ``job_ids`` that ``owner`` still holds (those it has
    recorded, or lost, it holds no more); returns how many."""
    if not job_ids:
        return 0
    conn = session.connection()
    expires = (now or utcnow()) + timedelta(seconds=lease_seconds)
    return rowcount(conn.execute(_heartbeat_stmt(conn.dialect.name), {
        "p_ids": list(job_ids), "p_owner": owner, "p_expires": expires}))


@functools.cache
def _succeed_stmt(dialect: str) -> Any:
    """running -> succeeded for the jobs of p_ids that p_owner holds, each adding its share of
    its pass's device time: on PostgreSQL p_shares, one per id (jobs recorded together span
    passes); elsewhere p_share, for all of them (one statement per share)."""
    which = one_of(Job.id, "p_ids", dialect)  # the primary key's index, whatever the plan
    if dialect == "postgresql":
        ids = bindparam("p_ids", type_=ARRAY(String()))
        shares = Grouping(bindparam("p_shares", type_=ARRAY(Float())))  # (...)[i], not ...[i]
        share = shares[func.array_position(ids, Job.id)]
    else:
        share = bindparam("p_share", type_=Float())
    # the lease owner is the guard (a job has one only while it runs): no status condition,
    # which statistics taken while nothing ran would make the way in, reading every running job
    stmt = (update(Job).where(which, Job.lease_owner == bindparam("p_owner", type_=String()))
            .values(status=JobStatus.SUCCEEDED, finished_at=_p_now(),
                    lease_owner=None, lease_expires_at=None,
                    device_seconds=Job.device_seconds + share, progress=1.0))
    return _moving(dialect, stmt, JobStatus.RUNNING, JobStatus.SUCCEEDED)


def record(session: Session, owner: str, results: Sequence[JobResult],
           now: datetime | None = None) -> tuple[set[str], set[str], set[str]]:
    """Record outcomes of jobs ``owner`` holds: (succeeded, failed, requeued) ids.

    Jobs whose lease moved on (expired and reclaimed, cancelled) are not
    touched and their outputs are not recorded.
    """
    now = now or utcnow()
    ok = [r for r in results if r.error is None]
    bad = [r for r in results if r.error is not None]
    succeeded: dict[str, int] = {}
    if ok:
        dialect = session.get_bind().dialect.name
        stmt = _succeed_stmt(dialect)
        common = {"p_owner": owner, "p_now": now}
        if dialect == "postgresql":
            groups = [{"p_ids": [r.job_id for r in ok],
                       "p_shares": [r.device_seconds for r in ok]}]
        else:
            by_share: dict[float, list[str]] = defaultdict(list)
            for r in ok:
                by_share[r.device_seconds].append(r.job_id)
            groups = [{"p_ids": part, "p_share": s} for s, ids in by_share.items()
                      for part in _chunks(ids, 2_000)]  # a parameter per id there
        for params in groups:
            rows = _run_move(session, stmt, {**common, **params}, JobStatus.RUNNING,
                             JobStatus.SUCCEEDED, "succeeded", owner, now)
            succeeded.update({r[0]: r[1] for r in rows})
        by_id = {r.job_id: r for r in ok}
        rows_out = [
            {"job_id": j, "name": o.name, "key": o.key, "sha256": o.sha256, "bytes": o.bytes,
             "content_type": o.content_type, "created_at": now}
            for j in succeeded for o in by_id[j].outputs
        ]
        insert_rows(session, Output, rows_out)
    failed, requeued = _fail(session, owner, bad, now) if bad else (set(), set())
    return set(succeeded), failed, requeued


def _fail(session: Session, owner: str, results: Sequence[JobResult],
          now: datetime) -> tuple[set[str], set[str]]:
    by_id = {r.job_id: r for r in results}
    rows = session.execute(
        select(Job.id, Job.attempt, Job.max_attempts).where(
            Job.id.in_(list(by_id)), Job.lease_owner == owner, Job.status == JobStatus.RUNNING)
    ).all()
    failed: set[str] = set()
    requeued: set[str] = set()
    events: list[dict[str, Any]] = []
    for job_id, attempt, max_attempts in rows:
        r = by_id[job_id]
        error = (r.error or "error")[:4000]
        if r.retryable and attempt < max_attempts:
            delay = random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1)))
            values: dict[str, Any] = dict(status=JobStatus.QUEUED, lease_owner=None,
                                          lease_expires_at=None, error=error, published_at=None,
                                          not_before=now + timedelta(seconds=delay))
            to = JobStatus.QUEUED
        else:
            values = dict(status=JobStatus.FAILED, lease_owner=None, lease_expires_at=None,
                          error=error, finished_at=now)
            to = JobStatus.FAILED
        done = rowcount(session.execute(
            update(Job).where(Job.id == job_id, Job.lease_owner == owner,
                              Job.status == JobStatus.RUNNING)
            .values(device_seconds=Job.device_seconds + r.device_seconds, **values)
            .execution_options(synchronize_session=False)
        ))
        if done:
            (requeued if to == JobStatus.QUEUED else failed).add(job_id)
            events.extend(_events([(job_id, attempt)], JobStatus.RUNNING, to, error, owner, now))
    _log(session, events)
    return failed, requeued


def release(session: Session, owner: str, job_ids: Sequence[str], reason: str,
            now: datetime | None = None) -> set[str]:
    """running -> queued for jobs handed back unfinished (warm shutdown); the attempt is refunded."""
    now = now or utcnow()
    rows = _move(session, update(Job).where(
        Job.id.in_(list(job_ids)), Job.lease_owner == owner, Job.status == JobStatus.RUNNING)
        .values(status=JobStatus.QUEUED, lease_owner=None, lease_expires_at=None,
                attempt=Job.attempt - 1, published_at=None),
        JobStatus.RUNNING, JobStatus.QUEUED, reason, owner, now)
    return {r[0] for r in rows}


def expire_leases(session: Session, now: datetime | None = None) -> tuple[set[str], set[str]]:
    """Running jobs whose lease ran out go back to the queue, or fail when out of attempts."""
    now = now or utcnow()
    expired = and_(job_status_is(JobStatus.RUNNING), Job.lease_expires_at < now)
    back = _move(session, update(Job).where(expired, Job.attempt < Job.max_attempts)
                 .values(status=JobStatus.QUEUED, lease_owner=None, lease_expires_at=None,
                         published_at=None, error="lease expired (worker lost)"),
                 JobStatus.RUNNING, JobStatus.QUEUED, "lease expired", None, now)
    dead = _move(session, update(Job).where(expired, Job.attempt >= Job.max_attempts)
                 .values(status=JobStatus.FAILED, lease_owner=None, lease_expires_at=None,
                         finished_at=now, error="lease expired on the last attempt (worker lost)"),
                 JobStatus.RUNNING, JobStatus.FAILED, "lease expired", None, now)
    return {r[0] for r in back}, {r[0] for r in dead}


def cancel(session: Session, job_filter: Any, reason: str = "cancelled by user",
           now: datetime | None = None) -> int:
    """queued|running -> cancelled for the jobs ``job_filter`` selects.

    Queued jobs can no longer be claimed once this commits; running ones stop at
    their worker's next batch boundary (the worker no longer holds them).
    """
    now = now or utcnow()
    moved = 0
    for status in (JobStatus.QUEUED, JobStatus.PAUSED, JobStatus.WAITING, JobStatus.RUNNING):
        moved += len(_move(session, update(Job).where(job_filter, Job.status == status)
                           .values(status=JobStatus.CANCELLED, lease_owner=None,
                                   lease_expires_at=None, finished_at=now, error=reason),
                           status, JobStatus.CANCELLED, reason, None, now))
    return moved


@functools.cache
def _waiting_stmts() -> tuple[Any, Any]:
    """Up to p_limit waiting jobs from id p_from on, and before it, with what they wait on
    (every finished unit asks)."""
    base = select(Job.id, Job.waits_on).where(job_status_is(JobStatus.WAITING)).order_by(
        Job.id).limit(bindparam("p_limit", type_=Integer()))
    start = bindparam("p_from", type_=String())
    return base.where(Job.id >= start), base.where(Job.id < start)


def release_waiting(session: Session, limit: int = 10_000, now: datetime | None = None,
                    start: str | None = None) -> tuple[list[tuple[str, str, str, int]], int]:
    """Waiting jobs whose parents all succeeded go to the queue; those with a parent that
    failed or was cancelled fail ("upstream failed"). Returns the released jobs as (id, queue,
    batch_key), to publish, and how many failed. Cheap when nothing waits.

    With more than ``limit`` waiting, one call looks at ``limit`` of them in id order from
    ``start`` (default: a random point), wrapping around: calls from fixed ids would look at
    the same jobs each time, and a job ready beyond them would wait for all of them."""
    now = now or utcnow()
    conn = session.connection()
    after, before = _waiting_stmts()
    start = f"{random.getrandbits(128):032x}" if start is None else start
    waiting = list(conn.execute(after, {"p_limit": limit, "p_from": start}))
    if len(waiting) < limit:
        waiting += conn.execute(before, {"p_limit": limit - len(waiting), "p_from": start}).all()
    if not waiting:
        return [], 0
    verdicts: dict[str, str | None] = {}  # group -> None (done), "" (pending) or why it failed
    for _, waits_on in waiting:
        for group in waits_on or []:
            key = json.dumps(group, sort_keys=True)
            if key not in verdicts:
                verdicts[key] = _group_verdict(session, group)
    ready, upstream = [], defaultdict(list)
    for job_id, waits_on in waiting:
        found = [verdicts[json.dumps(g, sort_keys=True)] for g in waits_on or []]
        failed = next((v for v in found if v), None)
        if failed:
            upstream[failed].append(job_id)
        elif all(v is None for v in found):
            ready.append(job_id)
    released = _move(session, update(Job).where(Job.id.in_(ready),
                                                Job.status == JobStatus.WAITING)
                     .values(status=JobStatus.QUEUED, published_at=None),
                     JobStatus.WAITING, JobStatus.QUEUED, "its parents succeeded", None, now,
                     Job.queue, Job.batch_key, Job.priority) if ready else []
    failed_n = 0
    for why, ids in upstream.items():
        failed_n += len(_move(session, update(Job).where(Job.id.in_(ids),
                                                         Job.status == JobStatus.WAITING)
                              .values(status=JobStatus.FAILED, finished_at=now, error=why),
                              JobStatus.WAITING, JobStatus.FAILED, "upstream failed", None, now))
    return [(r[0], r[2], r[3], r[4]) for r in released], failed_n


def _group_verdict(session: Session, group: dict[str, Any]) -> str | None:
    """None if every job of the group (a batch, or one line of it) succeeded, "" while some
    are unfinished, else why its dependents fail."""
    stmt = select(Job.status, func.count()).where(Job.batch_id == group["batch"])
    if "line" in group:
        stmt = stmt.where(Job.line == group["line"])
    counts = {str(s): int(n) for s, n in session.execute(stmt.group_by(Job.status))}
    what = (f"line {group['line']} of batch {group['batch']}" if "line" in group
            else f"batch {group['batch']}")
    bad = {s: n for s, n in counts.items() if s in (JobStatus.FAILED, JobStatus.CANCELLED)}
    if bad:
        return f"upstream failed: {what} has " + ", ".join(f"{n} {s}" for s, n in bad.items())
    if not counts:
        return f"upstream failed: {what} has no jobs"
    return None if set(counts) == {JobStatus.SUCCEEDED} else ""


def pause(session: Session, job_filter: Any, now: datetime | None = None) -> int:
    """queued -> paused for the jobs ``job_filter`` selects: no worker claims them until they
    are resumed. Running jobs finish (a retry of one goes back to the queue)."""
    now = now or utcnow()
    return len(_move(session, update(Job).where(job_filter, Job.status == JobStatus.QUEUED)
                     .values(status=JobStatus.PAUSED, published_at=None),
                     JobStatus.QUEUED, JobStatus.PAUSED, "paused by user", None, now))


def resume(session: Session, job_filter: Any, now: datetime | None = None
           ) -> list[tuple[str, str, str, int]]:
    """paused -> queued for the jobs ``job_filter`` selects; returns them as (id, queue,
    batch_key), to publish."""
    now = now or utcnow()
    rows = _move(session, update(Job).where(job_filter, Job.status == JobStatus.PAUSED)
                 .values(status=JobStatus.QUEUED, published_at=None),
                 JobStatus.PAUSED, JobStatus.QUEUED, "resumed by user", None, now,
                 Job.queue, Job.batch_key, Job.priority)
    return [(r[0], r[2], r[3], r[4]) for r in rows]


def retry_failed(session: Session, job_filter: Any, extra_attempts: int,
                 now: datetime | None = None) -> int:
    """failed -> queued for the jobs ``job_filter`` selects, with ``extra_attempts`` more tries."""
    now = now or utcnow()
    rows = _move(session, update(Job).where(job_filter, Job.status == JobStatus.FAILED)
                 .values(status=JobStatus.QUEUED, max_attempts=Job.attempt + extra_attempts,
                         finished_at=None, not_before=None, published_at=None),
                 JobStatus.FAILED, JobStatus.QUEUED, "retry requested", None, now)
    return len(rows)


def release_owned(session: Session, owner_prefix: str, reason: str,
                  now: datetime | None = None) -> set[str]:
    """Hand back every running job whose claim began with ``owner_prefix`` (a worker process)."""
    now = now or utcnow()
    rows = _move(session, update(Job).where(
        Job.lease_owner.startswith(owner_prefix, autoescape=True), job_status_is(JobStatus.RUNNING))
        .values(status=JobStatus.QUEUED, lease_owner=None, lease_expires_at=None,
                attempt=Job.attempt - 1, published_at=None),
        JobStatus.RUNNING, JobStatus.QUEUED, reason, None, now)
    return {r[0] for r in rows}


def due_unpublished(session: Session, republish_after_s: float, limit: int,
                    now: datetime | None = None) -> list[tuple[str, str, str, int, str]]:
    """Queued jobs that need a (new) message: (id, queue, batch_key, priority, batch_id), never
    published or long unclaimed."""
    now = now or utcnow()
    stale = now - timedelta(seconds=republish_after_s)
    stmt = (
        select(Job.id, Job.queue, Job.batch_key, Job.priority, Job.batch_id)
        .where(job_status_is(JobStatus.QUEUED), _due(now),
               or_(Job.published_at.is_(None), Job.published_at < stale))
        .order_by(Job.rank, Job.index)
        .limit(limit)
    )
    return [tuple(r) for r in session.execute(stmt)]  # type: ignore[misc]


def mark_published(session: Session, job_ids: Sequence[str], now: datetime | None = None) -> None:
    now = now or utcnow()
    for chunk in _chunks(list(job_ids), 5000):
        session.execute(
            update(Job).where(Job.id.in_(chunk), Job.status == JobStatus.QUEUED)
            .values(published_at=now).execution_options(synchronize_session=False)
        )


def unmark_published(session: Session, batch_id: str, at: datetime) -> None:
    """The queued jobs of ``batch_id`` recorded as published at ``at`` (at insert) whose message
    did not go out: never published again, so the reconciler's next pass publishes them."""
    session.execute(
        update(Job).where(Job.batch_id == batch_id, Job.status == JobStatus.QUEUED,
                          Job.published_at == at)
        .values(published_at=None).execution_options(synchronize_session=False))


def count_by_status(session: Session, batch_id: str) -> dict[str, int]:
    rows = session.execute(
        select(Job.status, func.count()).where(Job.batch_id == batch_id).group_by(Job.status)
    ).all()
    return {str(status): int(n) for status, n in rows}


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
