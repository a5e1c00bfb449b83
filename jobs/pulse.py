"""A running unit's pulse: one row per unit that its worker refreshes every few seconds, so a
unit whose worker died is found within seconds (its jobs' leases end at once) instead of after
its jobs' lease. A transaction that takes a pulse row and job rows takes the pulse row first,
as the heartbeat does: the other order can deadlock with it."""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, bindparam, delete, insert, select, update
from sqlalchemy.orm import Session

from jobs.models import Job, UnitPulse, UTCDateTime, job_status_is, utcnow
from jobs.sql import rowcount
from jobs.states import JobStatus


@functools.cache
def _pulse_stmts() -> tuple[Any, Any, Any]:
    """A unit's pulse row: made, refreshed, removed (owner p_owner, time p_now)."""
    owner = UnitPulse.owner == bindparam("p_owner", type_=String())
    return (insert(UnitPulse).values(owner=bindparam("p_owner", type_=String()),
                                     seen_at=bindparam("p_now", type_=UTCDateTime())),
            update(UnitPulse).where(owner).values(seen_at=bindparam("p_now", type_=UTCDateTime())),
            delete(UnitPulse).where(owner))


def pulse_start(session: Session, owner: str, now: datetime | None = None) -> None:
    """A unit began: its pulse row, in the transaction that claims its jobs."""
    session.connection().execute(_pulse_stmts()[0], {"p_owner": owner, "p_now": now or utcnow()})


def pulse(session: Session, owner: str, now: datetime | None = None) -> int:
    """The unit is alive (one row, whatever its job count); 0 once it was given up for lost."""
    return rowcount(session.connection().execute(
        _pulse_stmts()[1], {"p_owner": owner, "p_now": now or utcnow()}))


def pulse_end(session: Session, owner: str) -> None:
    session.connection().execute(_pulse_stmts()[2], {"p_owner": owner})


def expire_silent_units(session: Session, grace_s: float, now: datetime | None = None) -> int:
    """Units whose worker has not pulsed for ``grace_s`` are lost: their running jobs' leases
    end now, so :func:`jobs.lifecycle.expire_leases` returns them to the queue in this pass.
    Returns how many jobs it ended."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=grace_s)
    silent = list(session.scalars(select(UnitPulse.owner).where(UnitPulse.seen_at < cutoff)
                                  .limit(1000)))
    if not silent:
        return 0
    # the pulse rows first, then the jobs, as a heartbeat takes them (the other order can
    # deadlock with it); a unit that pulsed while this waited keeps its row, and its jobs
    gone = list(session.scalars(
        delete(UnitPulse).where(UnitPulse.owner.in_(silent), UnitPulse.seen_at < cutoff)
        .returning(UnitPulse.owner).execution_options(synchronize_session=False)))
    if not gone:
        return 0
    return rowcount(session.execute(
        update(Job).where(job_status_is(JobStatus.RUNNING), Job.lease_owner.in_(gone))
        .values(lease_expires_at=cutoff).execution_options(synchronize_session=False)))
