"""Batches: submit a manifest, list and watch them, cancel, retry."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.auth import Auth, Caller
from api.deps import Farm, FarmDep
from api.guards import NUL_MESSAGE, find_nul
from api.offloop import off_loop
from api.routes import REFUSALS
from api.schemas import (
    ActionResult,
    BatchCreated,
    BatchPage,
    BatchRequest,
    BatchView,
    Problem,
    RequestProblem,
    ValidationProblem,
)
from jobs.batches import cancel_jobs, resolve_batch, summarize
from jobs.errors import LineError, ManifestError, NotFound
from jobs.labels import BatchMeta, InvalidMeta, parse_labels, where_batch
from jobs.manifest_records import loads
from jobs.models import Batch, Job
from jobs.presence import unserved
from jobs.submit import SubmitResult, pause_jobs, resume_jobs, retry_failed_jobs

router = APIRouter(prefix="/v1/batches", tags=["batches"])

JSONL_TYPES = ("application/x-ndjson", "application/jsonl", "text/plain")
JSON_TYPES = ("application/json", "")

BODY_DOC = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": BatchRequest.model_json_schema(
        ref_template="#/components/schemas/{model}")},
    "application/x-ndjson": {"schema": {"type": "string", "description": "A JSONL manifest."}}}}}


@router.post("", status_code=201, response_model=BatchCreated, openapi_extra=BODY_DOC,
             responses={422: {"model": ValidationProblem | RequestProblem}, 413: {"model": Problem},
                        415: {"model": Problem}, **REFUSALS})
async def create_batch(request: Request, who: Auth, farm: FarmDep,
                       force: Annotated[bool, Query(description="Run jobs identical to "
                                                    "succeeded ones again instead of reusing "
                                                    "their outputs.")] = False,
                       name: Annotated[str, Query(max_length=128, description="A JSONL body's "
                                                  "batch name (a JSON body says it itself).")
                                       ] = "",
                       label: Annotated[list[str] | None, Query(description="A JSONL body's "
                                                                "labels, key=value, repeated."
                                                                )] = None,
                       webhook_url: Annotated[str | None, Query(max_length=2048)] = None) -> Any:
    """Validate a manifest whole (JSON body of jobs, or a JSONL body) and queue it. A job
    identical to one of the project's succeeded jobs reuses its outputs unless ``force``."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in JSONL_TYPES + JSON_TYPES:
        raise HTTPException(415, f"unsupported content type {ctype[:100]!r}")
    meta = query_meta(name, label, webhook_url)
    body = await request.body()  # the only part on the event loop: the rest is CPU or blocking
    result = await off_loop(submit_body, farm, who.project, body, ctype, force, meta)
    return BatchCreated(id=result.batch_id, batch_id=result.batch_id, job_count=result.job_count,
                        units=result.units, published=result.published, reused=result.reused)


def query_meta(name: str, label: list[str] | None, webhook_url: str | None) -> BatchMeta:
    """A batch's name, labels and URL given in the query string, checked (a 422 naming it)."""
    try:
        return BatchMeta(name, parse_labels(label or []), webhook_url).checked()
    except InvalidMeta as exc:
        raise ManifestError([LineError(0, exc.field, str(exc))], "query") from None


def submit_body(farm: Farm, project: str, body: bytes, ctype: str,
                force: bool = False, meta: BatchMeta | None = None) -> SubmitResult:
    """Parse, validate, resolve and record one request body as a batch, then publish it: the
    whole submission path, in one place (a worker thread)."""
    if ctype in JSONL_TYPES:
        return farm.submitter.submit_manifest(project, body, format="jsonl", source="upload.jsonl",
                                              force=force, meta=meta)
    payload = read_json_body(body)
    given = BatchMeta(payload.name, payload.labels, payload.webhook_url)
    if meta is not None and (meta.name or meta.labels or meta.webhook_url):
        given = BatchMeta(meta.name or given.name, {**given.labels, **meta.labels},
                          meta.webhook_url or given.webhook_url)
    try:
        given = given.checked()
    except InvalidMeta as exc:
        raise _body_error(exc.field, str(exc)) from None
    specs = farm.submitter.validate(payload.jobs, source="jobs", project=project)
    return farm.submitter.submit(project, specs, source=payload.source, force=force, meta=given)


def read_json_body(body: bytes) -> BatchRequest:
    """The JSON body as a BatchRequest, or a ManifestError naming the field at fault (line 0:
    the body; line N: the body's Nth job)."""
    try:
        data = loads(body.decode("utf-8")) if body.strip() else {}
    except UnicodeDecodeError as exc:
        raise _body_error("", f"not UTF-8 text ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise _body_error("", f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") \
            from None
    except RecursionError:
        raise _body_error("", "invalid JSON: nested too deeply") from None
    except ValueError as exc:  # duplicate keys, NaN, absurd integers
        raise _body_error("", f"invalid JSON: {exc}") from None
    where = find_nul(data)
    if where is not None:
        head, _, rest = where.partition(".")
        if head == "jobs" and rest and isinstance(data.get("jobs"), list):
            index, _, field = rest.partition(".")
            raise ManifestError([LineError(int(index) + 1, field, NUL_MESSAGE)], "jobs")
        raise _body_error(where, NUL_MESSAGE)
    try:
        return BatchRequest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError([LineError(0, ".".join(str(p) for p in e["loc"]), e["msg"])
                             for e in exc.errors()], "body") from None


def _body_error(field: str, message: str) -> ManifestError:
    return ManifestError([LineError(0, field, message)], "body")


@router.get("", response_model=BatchPage, responses={400: {"model": Problem}, **REFUSALS})
def list_batches(who: Auth, farm: FarmDep, limit: Annotated[int, Query(ge=1, le=200)] = 20,
                 offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
                 name: Annotated[str | None, Query(max_length=128, description="Only batches "
                                                   "of this name.")] = None,
                 label: Annotated[list[str] | None, Query(description="Only batches carrying "
                                                          "this label (key=value); repeat for "
                                                          "several, all must match.")] = None
                 ) -> Any:
    """The caller's project's batches, newest first (of a name, carrying labels)."""
    try:
        wanted = parse_labels(label or [])
    except InvalidMeta as exc:
        raise HTTPException(400, str(exc)) from None
    with farm.sessions() as session:
        mine = where_batch(select(Batch).where(Batch.project == who.project), name, wanted)
        total = session.scalar(select(func.count()).select_from(mine.subquery())) or 0
        rows = session.scalars(mine.order_by(Batch.created_at.desc(), Batch.id)
                               .limit(limit).offset(offset)).all()
        return BatchPage(items=[batch_view(session, b) for b in rows], total=total,
                         limit=limit, offset=offset)


@router.get("/{batch_id}", response_model=BatchView, responses=REFUSALS)
def get_batch(batch_id: str, who: Auth, farm: FarmDep) -> Any:
    """Counts per state, progress and device seconds of one batch, and its queued jobs whose
    model no running worker serves."""
    with farm.sessions() as session:
        batch = own_batch(session, batch_id, who)
        view = batch_view(session, batch)
        view.unserved_models = unserved(session, 3 * farm.settings.reconcile_interval, batch.id)
        return view


@router.post("/{batch_id}/cancel", response_model=ActionResult, responses=REFUSALS)
def cancel_batch(batch_id: str, who: Auth, farm: FarmDep) -> Any:
    """Cancel: queued jobs never start; running ones stop at their next batch boundary."""
    with farm.sessions() as session:
        batch = own_batch(session, batch_id, who)
    n = cancel_jobs(farm.sessions, farm.storage, Job.batch_id == batch.id, [batch.id])
    return ActionResult(batch_id=batch.id, changed=n)


@router.post("/{batch_id}/pause", response_model=ActionResult, responses=REFUSALS)
def pause_batch(batch_id: str, who: Auth, farm: FarmDep) -> Any:
    """Pause: queued jobs are held (paused) until resumed; running ones finish."""
    with farm.sessions() as session:
        batch = own_batch(session, batch_id, who)
    return ActionResult(batch_id=batch.id, changed=pause_jobs(farm.sessions,
                                                              Job.batch_id == batch.id))


@router.post("/{batch_id}/resume", response_model=ActionResult, responses=REFUSALS)
def resume_batch(batch_id: str, who: Auth, farm: FarmDep) -> Any:
    """Resume: paused jobs are queued again, in their old place, and published."""
    with farm.sessions() as session:
        batch = own_batch(session, batch_id, who)
    n = resume_jobs(farm.sessions, farm.publish, Job.batch_id == batch.id,
                    unit_size=farm.settings.unit_size)
    return ActionResult(batch_id=batch.id, changed=n)


@router.post("/{batch_id}/retry", response_model=ActionResult, responses=REFUSALS)
def retry_batch(batch_id: str, who: Auth, farm: FarmDep) -> Any:
    """Requeue the batch's failed jobs."""
    with farm.sessions() as session:
        batch = own_batch(session, batch_id, who)
    s = farm.settings
    n = retry_failed_jobs(farm.sessions, farm.publish, Job.batch_id == batch.id, [batch.id],
                          s.max_attempts, unit_size=s.unit_size,
                          republish_after_s=s.republish_after_seconds)
    return ActionResult(batch_id=batch.id, changed=n)


def own_batch(session: Session, batch_id: str, who: Caller) -> Batch:
    try:
        return resolve_batch(session, batch_id, project=who.project)
    except NotFound:
        raise HTTPException(404, "no such batch") from None


def batch_view(session: Session, batch: Batch) -> BatchView:
    s = summarize(session, batch).as_dict()
    return BatchView(id=s["id"], project=s["project"], status=s["status"], source=s["source"],
                     jobs=s["jobs"], done=s["done"], progress=s["progress"],
                     counts=s["counts"], device_seconds=s["device_seconds"],
                     created_at=batch.created_at, finished_at=batch.finished_at,
                     manifest_key=batch.manifest_key, reused=s["reused"], name=s["name"],
                     labels=s["labels"], started_at=s["started_at"])
