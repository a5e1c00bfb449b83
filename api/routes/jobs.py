"""Jobs: one job's state and outputs, and the outputs' bytes."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.auth import Auth, Caller
from api.deps import Farm, FarmDep
from api.routes import REFUSALS
from api.schemas import JobView, OutputView, Problem
from jobs.models import Batch, Job, Output
from storage.errors import BadKey, ChecksumMismatch, ObjectNotFound

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
log = logging.getLogger("genfarm.api")


@router.get("/{job_id}", response_model=JobView, responses=REFUSALS)
def get_job(job_id: str, who: Auth, farm: FarmDep) -> Any:
    """A job's params, state, attempts, error and outputs (with download URLs)."""
    with farm.sessions() as session:
        job = own_job(session, job_id, who)
        outputs = session.scalars(select(Output).where(Output.job_id == job.id)
                                  .order_by(Output.name)).all()
    views = [OutputView(name=out.name, key=out.key, sha256=out.sha256, bytes=out.bytes,
                        content_type=out.content_type,
                        url=output_url(farm, who, job, out))
             for out in outputs]
    return JobView(id=job.id, batch_id=job.batch_id, index=job.index, kind=job.kind,
                   params=job.params, status=job.status, attempt=job.attempt,
                   max_attempts=job.max_attempts, error=job.error,
                   device_seconds=job.device_seconds, reused_from=job.reused_from,
                   progress=job.progress,
                   created_at=job.created_at,
                   started_at=job.started_at, finished_at=job.finished_at, outputs=views)


@router.get("/{job_id}/outputs/{name}", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}},
                       409: {"model": Problem}, 502: {"model": Problem}, **REFUSALS})
def download_output(job_id: str, name: str, who: Auth, farm: FarmDep) -> Response:
    """The bytes of one output, checked against its sha256 (502 if they no longer match; 409 if
    its record names a key outside its batch, which is never served)."""
    with farm.sessions() as session:
        job = own_job(session, job_id, who)
        out = session.scalar(select(Output).where(Output.job_id == job.id, Output.name == name))
    if out is None:
        raise HTTPException(404, "no such output")
    try:
        if not in_batch(farm, who, job, out.key):
            raise BadKey(f"{out.key!r} is outside batch {job.batch_id}")
        data = farm.storage.get(out.key, sha256=out.sha256)
    except ObjectNotFound:
        raise HTTPException(404, "output missing from storage") from None
    except BadKey as exc:
        log.error("job %s output %s: bad stored key: %s", job.id, name, exc)
        raise HTTPException(409, "the output's recorded storage key is not valid; "
                                 "it was not served") from None
    except ChecksumMismatch as exc:
        log.error("job %s output %s: %s", job.id, name, exc)
        raise HTTPException(502, "the stored output does not match its recorded sha256 "
                                 "(damaged or replaced); it was not served") from None
    return Response(data, media_type=out.content_type, headers={"X-Genfarm-Sha256": out.sha256})


def own_job(session: Session, job_id: str, who: Caller) -> Job:
    job = session.scalar(select(Job).join(Batch, Batch.id == Job.batch_id)
                         .where(Job.id == job_id, Batch.project == who.project))
    if job is None:
        raise HTTPException(404, "no such job")
    return job


def in_batch(farm: Farm, who: Caller, job: Job, key: str) -> bool:
    """Whether a recorded output key lies in its batch's folder: one that does not (a bad row)
    is never read nor presigned, so it cannot hand out another project's objects."""
    return key.startswith(farm.storage.batch_prefix(who.project, job.batch_id))


def output_url(farm: Farm, who: Caller, job: Job, out: Output) -> str:
    presigned = farm.storage.presigned_url(out.key) if in_batch(farm, who, job, out.key) else None
    return presigned or download_url(farm, out)


def download_url(farm: Farm, out: Output) -> str:
    """This API's URL for an output: under GENFARM_API_PUBLIC_URL when set, else a path relative
    to the API. Never built from the request's Host header, which the client controls."""
    path = f"/v1/jobs/{quote(out.job_id, safe='')}/outputs/{quote(out.name, safe='')}"
    base = (farm.settings.api_public_url or "").rstrip("/")
    return base + path
