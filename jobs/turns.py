"""Farm-wide periodic passes: every worker ticks, one takes each turn.

The reconciler's pass (leases, lost messages, waiting jobs, batches to close) is the farm's
work, not each worker's: with a pass per worker per interval, a thousand workers ran 33 passes
a second, racing for the same rows. A worker whose tick finds the last pass, on any worker,
older than the interval takes the turn (one row's conditional update, so two cannot both take
it); the others skip. A worker lost in the middle of its pass costs the farm one interval.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from jobs.models import FarmTurn, utcnow
from jobs.sql import rowcount

EARLY = 0.9  # a tick may take a turn this share of an interval after the last: timers drift


def take_turn(session: Session, name: str, every_s: float, now: datetime | None = None) -> bool:
    """Whether the caller runs the farm's ``name`` pass now: true for one caller at a time,
    once per ``every_s`` across the farm (and for the first ever)."""
    now = now or utcnow()
    due = now - timedelta(seconds=every_s * EARLY)
    if rowcount(session.execute(update(FarmTurn).where(FarmTurn.name == name,
                                                       FarmTurn.ran_at <= due)
                                .values(ran_at=now).execution_options(synchronize_session=False))):
        return True
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    return session.execute(insert(FarmTurn).values(name=name, ran_at=now)  # the first ever
                           .on_conflict_do_nothing(index_elements=["name"])
                           .returning(FarmTurn.name)).first() is not None
