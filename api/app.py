"""The HTTP API (FastAPI): `genfarm api` serves it. Routes are thin: jobs/ and storage/ do the work."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import func, select, text

from api.auth import Auth, Caller, RateLimiter
from api.metrics import FarmCollector
from api.schemas import (
    ActionResult,
    BatchCreated,
    BatchPage,
    BatchRequest,
    BatchView,
    Health,
    JobView,
    LineProblem,
    OutputView,
    Problem,
    ValidationProblem,
)
from jobs import __version__
from jobs.batches import cancel_jobs, resolve_batch, summarize
from jobs.db import make_engine, session_factory
from jobs.errors import LineError, ManifestError, NotFound
from jobs.manifest import parse_manifest, validate_records
from jobs.models import Batch, Job, Output
from jobs.settings import Settings
from jobs.sources import resolve_sources
from jobs.submit import retry_failed_jobs, submit
from storage import open_storage
from storage.errors import ObjectNotFound
from workers.app import QUEUES, make_app, publisher

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem}, 401: {"model": Problem}, 429: {"model": Problem}}


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, whether announced or streamed."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await JSONResponse({"detail": f"request body over {self.limit} bytes"},
                                      413)(scope, receive, send)
        seen = 0

        async def limited() -> Any:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, f"request body over {self.limit} bytes")
            return message

        return await self.app(scope, limited, send)


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(title="genfarm", version=__version__,
                  description="Submit manifests of generation jobs, watch batches, fetch outputs.")
    engine = make_engine(settings.resolved_database_url())
    app.state.sessions = sessions = session_factory(engine)
    app.state.storage = storage = open_storage(settings.resolved_storage_url(),
                                               endpoint_url=settings.s3_endpoint_url)
    celery = make_app(settings)
    publish = publisher(celery)
    app.state.limiter = RateLimiter(settings.api_rate_per_minute, settings.api_rate_burst)
    app.add_middleware(BodyLimit, limit=settings.api_max_body_bytes)

    def own_batch(session: Any, batch_id: str, who: Caller) -> Batch:
        try:
            return resolve_batch(session, batch_id, project=who.project)
        except NotFound:
            raise HTTPException(404, "no such batch") from None

    def own_job(session: Any, job_id: str, who: Caller) -> Job:
        job = session.scalar(select(Job).join(Batch, Batch.id == Job.batch_id)
                             .where(Job.id == job_id, Batch.project == who.project))
        if job is None:
            raise HTTPException(404, "no such job")
        return job

    def batch_view(session: Any, batch: Batch) -> BatchView:
        s = summarize(session, batch).as_dict()
        return BatchView(id=s["id"], project=s["project"], status=s["status"], source=s["source"],
                         jobs=s["jobs"], done=s["done"], progress=s["progress"],
                         counts=s["counts"], device_seconds=s["device_seconds"],
                         created_at=batch.created_at, finished_at=batch.finished_at,
                         manifest_key=batch.manifest_key)

    @app.post("/v1/batches", status_code=201, response_model=BatchCreated,
              responses={422: {"model": ValidationProblem}, 413: {"model": Problem},
                         415: {"model": Problem}, **NOT_FOUND},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": BatchRequest.model_json_schema(
                      ref_template="#/components/schemas/{model}")},
                  "application/x-ndjson": {"schema": {"type": "string",
                                                      "description": "A JSONL manifest."}}}}})
    async def create_batch(request: Request, who: Auth) -> Any:
        """Validate a manifest whole (JSON body of jobs, or a JSONL body) and queue it."""
        body = await request.body()
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            if ctype in ("application/x-ndjson", "application/jsonl", "text/plain"):
                specs = parse_manifest(body, format="jsonl", source="upload",
                                       default_max_attempts=settings.max_attempts)
                source = "upload.jsonl"
            elif ctype in ("application/json", ""):
                try:
                    payload = BatchRequest.model_validate_json(body or b"{}")
                except ValueError as exc:
                    raise ManifestError([LineError(0, "body", str(exc).splitlines()[0])]) from exc
                specs = validate_records(((i, job, True) for i, job in enumerate(payload.jobs, 1)),
                                         source="jobs", default_max_attempts=settings.max_attempts)
                source = payload.source
            else:
                raise HTTPException(415, f"unsupported content type {ctype!r}")
        except ManifestError as exc:
            return invalid(exc)
        def resolve_and_submit() -> Any:
            with sessions() as session:
                resolved = resolve_sources(specs, session, who.project, storage)
            return submit(sessions, who.project, resolved, publish, unit_size=settings.unit_size,
                          source=source)

        try:
            result = await run_in_threadpool(resolve_and_submit)
        except ManifestError as exc:
            return invalid(exc)
        return BatchCreated(batch_id=result.batch_id, job_count=result.job_count,
                            units=result.units, published=result.published)

    @app.get("/v1/batches", response_model=BatchPage, responses=NOT_FOUND)
    def list_batches(who: Auth, limit: Annotated[int, Query(ge=1, le=200)] = 20,
                     offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0) -> Any:
        """The caller's project's batches, newest first."""
        with sessions() as session:
            mine = select(Batch).where(Batch.project == who.project)
            total = session.scalar(select(func.count()).select_from(mine.subquery())) or 0
            rows = session.scalars(mine.order_by(Batch.created_at.desc(), Batch.id)
                                   .limit(limit).offset(offset)).all()
            return BatchPage(items=[batch_view(session, b) for b in rows], total=total,
                             limit=limit, offset=offset)

    @app.get("/v1/batches/{batch_id}", response_model=BatchView, responses=NOT_FOUND)
    def get_batch(batch_id: str, who: Auth) -> Any:
        """Counts per state, progress and device seconds of one batch."""
        with sessions() as session:
            return batch_view(session, own_batch(session, batch_id, who))

    @app.post("/v1/batches/{batch_id}/cancel", response_model=ActionResult, responses=NOT_FOUND)
    def cancel_batch(batch_id: str, who: Auth) -> Any:
        """Cancel: queued jobs never start; running ones stop at their next batch boundary."""
        with sessions() as session:
            batch = own_batch(session, batch_id, who)
        n = cancel_jobs(sessions, storage, Job.batch_id == batch.id, [batch.id])
        return ActionResult(batch_id=batch.id, changed=n)

    @app.post("/v1/batches/{batch_id}/retry", response_model=ActionResult, responses=NOT_FOUND)
    def retry_batch(batch_id: str, who: Auth) -> Any:
        """Requeue the batch's failed jobs."""
        with sessions() as session:
            batch = own_batch(session, batch_id, who)
        n = retry_failed_jobs(sessions, publish, Job.batch_id == batch.id, [batch.id],
                              settings.max_attempts, unit_size=settings.unit_size,
                              republish_after_s=settings.republish_after_seconds)
        return ActionResult(batch_id=batch.id, changed=n)

    @app.get("/v1/jobs/{job_id}", response_model=JobView, responses=NOT_FOUND)
    def get_job(job_id: str, request: Request, who: Auth) -> Any:
        """A job's params, state, attempts, error and outputs (with download URLs)."""
        with sessions() as session:
            job = own_job(session, job_id, who)
            outputs = session.scalars(select(Output).where(Output.job_id == job.id)
                                      .order_by(Output.name)).all()
        views = []
        for out in outputs:
            url = storage.presigned_url(out.key) or str(
                request.url_for("download_output", job_id=job.id, name=out.name))
            views.append(OutputView(name=out.name, key=out.key, sha256=out.sha256, bytes=out.bytes,
                                    content_type=out.content_type, url=url))
        return JobView(id=job.id, batch_id=job.batch_id, index=job.index, kind=job.kind,
                       params=job.params, status=job.status, attempt=job.attempt,
                       max_attempts=job.max_attempts, error=job.error,
                       device_seconds=job.device_seconds, progress=job.progress,
                       created_at=job.created_at,
                       started_at=job.started_at, finished_at=job.finished_at, outputs=views)

    @app.get("/v1/jobs/{job_id}/outputs/{name}", name="download_output", response_class=Response,
             responses={200: {"content": {"application/octet-stream": {}}}, **NOT_FOUND})
    def download_output(job_id: str, name: str, who: Auth) -> Response:
        """The bytes of one output, checked against its sha256."""
        with sessions() as session:
            job = own_job(session, job_id, who)
            out = session.scalar(select(Output).where(Output.job_id == job.id, Output.name == name))
        if out is None:
            raise HTTPException(404, "no such output")
        try:
            data = storage.get(out.key, sha256=out.sha256)
        except ObjectNotFound:
            raise HTTPException(404, "output missing from storage") from None
        return Response(data, media_type=out.content_type,
                        headers={"X-Genfarm-Sha256": out.sha256})

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health}})
    def healthz() -> Any:
        """Database, broker and storage reachable."""
        checks: dict[str, str] = {}
        for name, probe in (("database", lambda: _ping_db(sessions)),
                            ("broker", lambda: _ping_broker(celery)),
                            ("storage", storage.check)):
            try:
                probe()
                checks[name] = "ok"
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                checks[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse(Health(ok=ok, checks=checks).model_dump(), 200 if ok else 503)

    registry = CollectorRegistry()
    registry.register(FarmCollector(sessions, lambda: _queue_depths(settings)))

    @app.get("/metrics", response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    def metrics() -> Response:
        """Prometheus metrics: jobs by state and kind, queue depth, batch sizes, device
        seconds, job latency."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.state.engine = engine
    return app


def invalid(exc: ManifestError) -> JSONResponse:
    """422 naming every bad item (the first thousand): line, field, what was expected."""
    return JSONResponse(ValidationProblem(
        detail=f"{len(exc.errors)} error(s); nothing was submitted",
        errors=[LineProblem(line=e.line, field=e.field, message=e.message)
                for e in exc.errors[:1000]]).model_dump(), 422)


def _ping_db(sessions: Any) -> None:
    with sessions() as session:
        session.execute(text("select 1"))


def _ping_broker(celery: Any) -> None:
    with celery.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)


def _queue_depths(settings: Settings) -> dict[str, int] | None:
    url = settings.resolved_broker_url()
    if not url.startswith(("redis://", "rediss://")):
        return None
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        return {q: int(client.llen(q)) for q in QUEUES}
    finally:
        client.close()


