"""Budgets and usage: a project's device-seconds budget counts the jobs submitted since it was
set, finished ones at the device seconds they took and the rest at their estimate, so a
submission is refused before it would overrun (``BudgetExceeded``). Torch-free."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from jobs.errors import BudgetExceeded
from jobs.labels import where_batch
from jobs.models import Batch, Budget, Job, Project, utcnow
from jobs.states import JobStatus


def committed_seconds(session: Session, project: str, since: Any = None) -> float:
    """Device seconds a project's jobs spent (finished ones) or are estimated to spend (the
    rest), of the jobs submitted since ``since``."""
    spent = case((Job.finished_at.is_not(None), Job.device_seconds), else_=Job.estimate_seconds)
    stmt = (select(func.coalesce(func.sum(spent), 0.0)).join(Batch, Batch.id == Job.batch_id)
            .where(Batch.project == project))
    if since is not None:
        stmt = stmt.where(Job.created_at >= since)
    return float(session.scalar(stmt) or 0.0)


def check_budget(session: Session, project: str, needed: float) -> None:
    budget = session.get(Budget, project)
    if budget is None:
        return
    committed = committed_seconds(session, project, budget.set_at)
    if committed + needed > budget.device_seconds:
        raise BudgetExceeded(project, budget.device_seconds, committed, needed)


def set_budget(session: Session, project: str, seconds: float | None,
               now: datetime | None = None) -> None:
    """Set (or with None remove) ``project``'s budget; it counts from now."""
    budget = session.get(Budget, project)
    if seconds is None:
        if budget is not None:
            session.delete(budget)
        return
    if session.get(Project, project) is None:
        session.add(Project(name=project, created_at=now or utcnow()))
        session.flush()
    if budget is None:
        session.add(Budget(project=project, device_seconds=seconds, set_at=now or utcnow()))
    else:
        budget.device_seconds, budget.set_at = seconds, now or utcnow()


def usage(session: Session, project: str | None = None, since: datetime | None = None, *,
          name: str | None = None, labels: Mapping[str, str] | None = None
          ) -> list[dict[str, Any]]:
    """Per project: jobs and device seconds spent since ``since`` (finished jobs), jobs that
    reused an earlier output, and the budget with what it has left; of the batches of this
    ``name`` and carrying all these ``labels`` when given (the budget is the project's)."""
    finished = Job.finished_at.is_not(None)
    stmt = (select(Batch.project, func.count(Job.id),
                   func.coalesce(func.sum(case((finished, Job.device_seconds), else_=0.0)), 0.0),
                   func.sum(case((Job.status == JobStatus.SUCCEEDED, 1), else_=0)),
                   func.sum(case((Job.reused_from.is_not(None), 1), else_=0)))
            .join(Batch, Batch.id == Job.batch_id).group_by(Batch.project)
            .order_by(Batch.project))
    if project is not None:
        stmt = stmt.where(Batch.project == project)
    if since is not None:
        stmt = stmt.where(Job.created_at >= since)
    stmt = where_batch(stmt, name, labels)
    rows = {p: (int(n), float(s or 0.0), int(ok or 0), int(r or 0))
            for p, n, s, ok, r in session.execute(stmt)}
    budgets = {b.project: b for b in session.scalars(select(Budget))}
    filtered = bool(name or labels)  # then only the projects with such batches
    names = sorted(set(rows) | ({project} if project else set() if filtered else set(budgets)))
    out = []
    for name in names:
        jobs, spent, succeeded, reused = rows.get(name, (0, 0.0, 0, 0))
        entry: dict[str, Any] = {"project": name, "jobs": jobs, "succeeded": succeeded,
                                 "reused": reused, "device_seconds": round(spent, 3),
                                 "budget": None}
        budget = budgets.get(name)
        if budget is not None:
            committed = committed_seconds(session, name, budget.set_at)
            entry["budget"] = {"device_seconds": budget.device_seconds,
                               "since": budget.set_at.isoformat(),
                               "committed": round(committed, 3),
                               "left": round(max(0.0, budget.device_seconds - committed), 3)}
        out.append(entry)
    return out
