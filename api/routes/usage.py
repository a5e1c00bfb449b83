"""Usage: the caller's project's device seconds, reused jobs and budget."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from api.auth import Auth
from api.deps import FarmDep
from api.routes import REFUSALS
from jobs.budgets import usage

router = APIRouter(prefix="/v1/usage", tags=["usage"])


@router.get("", responses=REFUSALS)
def get_usage(who: Auth, farm: FarmDep, since: Annotated[datetime | None, Query(
        description="Only jobs submitted since (ISO 8601).")] = None) -> Any:
    """Jobs and device seconds spent by this project (since a date), the jobs that reused an
    earlier identical job's outputs, and its budget with what is left."""
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    with farm.sessions() as session:
        [row] = usage(session, who.project, since)
    return row
