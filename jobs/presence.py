"""Which models the running workers serve: each worker says so when it starts and at every
reconciler pass, and forgets itself when it stops. A job whose model no live worker serves is
not stuck: it waits, and `genfarm status` and the API's batch view (``unserved_models``) say
for what."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from jobs.models import Job, Worker, job_status_is, utcnow
from jobs.states import JobStatus


def announce(session: Session, name: str, models: Sequence[str],
             now: datetime | None = None) -> None:
    now = now or utcnow()
    row = session.get(Worker, name)
    if row is None:
        session.add(Worker(name=name, models=list(models), started_at=now, seen_at=now))
    else:
        row.models, row.seen_at = list(models), now


def forget(session: Session, name: str) -> None:
    session.execute(delete(Worker).where(Worker.name == name))


def served_models(session: Session, stale_after_s: float,
                  now: datetime | None = None) -> dict[str, list[str]]:
    """model -> names of the workers seen within ``stale_after_s`` that serve it."""
    since = (now or utcnow()) - timedelta(seconds=stale_after_s)
    served: dict[str, list[str]] = {}
    for name, models in session.execute(select(Worker.name, Worker.models)
                                        .where(Worker.seen_at >= since)):
        for model in models:
            served.setdefault(model, []).append(name)
    return served


def unserved(session: Session, stale_after_s: float, batch_id: str | None = None,
             now: datetime | None = None) -> dict[str, int]:
    """Queued jobs (of one batch, or all) whose model no live worker serves: model -> count."""
    stmt = (select(Job.model, func.count()).where(job_status_is(JobStatus.QUEUED))
            .group_by(Job.model))
    if batch_id is not None:
        stmt = stmt.where(Job.batch_id == batch_id)
    served = served_models(session, stale_after_s, now)
    return {model: int(n) for model, n in session.execute(stmt) if model not in served}
