"""A batch's jobs: the listing (paged, by state) and the batch manifest, finished or not."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from sqlalchemy import func, select

from api.auth import Auth
from api.deps import FarmDep
from api.routes import REFUSALS
from api.routes.batches import own_batch
from api.schemas import JobPage, JobSummary
from jobs.batches import manifest_lines
from jobs.models import Job
from jobs.states import JobStatus

router = APIRouter(prefix="/v1/batches", tags=["batches"])


@router.get("/{batch_id}/jobs", response_model=JobPage, responses=REFUSALS)
def list_batch_jobs(batch_id: str, who: Auth, farm: FarmDep,
                    status: Annotated[JobStatus | None, Query(
                        description="Only jobs in this state.")] = None,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0) -> Any:
    """The batch's jobs in manifest order, each with its state, attempts and error (a job's
    params and outputs: GET /v1/jobs/{id})."""
    with farm.sessions() as session:
        batch = own_batch(session, batch_id, who)
        where = [Job.batch_id == batch.id]
        if status is not None:
            where.append(Job.status == status.value)
        total = session.scalar(select(func.count()).select_from(Job).where(*where)) or 0
        rows = session.scalars(select(Job).where(*where).order_by(Job.index)
                               .limit(limit).offset(offset)).all()
        items = [JobSummary(id=j.id, index=j.index, kind=j.kind, model=j.model, status=j.status,
                            attempt=j.attempt, max_attempts=j.max_attempts, error=j.error,
                            device_seconds=j.device_seconds, reused_from=j.reused_from,
                            created_at=j.created_at, started_at=j.started_at,
                            finished_at=j.finished_at) for j in rows]
    return JobPage(items=items, total=total, limit=limit, offset=offset)


# a plain Response: a response_class with its own media type would document the JSON problem
# answers (401, 404, ...) under that type too
@router.get("/{batch_id}/manifest", response_class=Response,
            responses={200: {"content": {"application/x-ndjson": {
                "schema": {"type": "string"}}}}, **REFUSALS})
def get_manifest(batch_id: str, who: Auth, farm: FarmDep) -> Response:
    """The batch manifest as JSONL: one line per job with its params, status, attempts, error
    and outputs (keys, sha256). For a finished batch it is what ``manifest.jsonl`` in storage
    holds; for an unfinished one, the jobs as they stand now."""
    with farm.sessions() as session:
        batch = own_batch(session, batch_id, who)
        body = manifest_lines(session, batch.id)
    return Response(body, media_type="application/x-ndjson")
