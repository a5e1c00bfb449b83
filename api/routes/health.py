"""Health and metrics: whether the farm's services answer, and Prometheus figures. Anyone may
ask whether the farm is ok; the figures across projects and each check's error text (which may
name internal hosts) are for the admin token only."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from api.auth import Admin, MaybeAdmin
from api.deps import Farm, FarmDep
from api.routes import UNAVAILABLE
from api.schemas import Health, Problem

router = APIRouter(tags=["health"])

HEALTH_TIMEOUT_S = 5.0  # a probe still out by then counts as failed (it finishes on its own)
_probes = ThreadPoolExecutor(max_workers=6, thread_name_prefix="genfarm-health")


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}},
            openapi_extra={"security": [{}]})  # the token is optional: {} joins the bearer
def healthz(farm: FarmDep, admin: MaybeAdmin) -> Any:
    """Whether the database, the broker and the storage answer: ``{"ok": ...}``, 200 or 503.
    With the admin token, each check's outcome too."""
    checks = run_checks({"database": lambda: ping_db(farm), "broker": lambda: ping_broker(farm),
                         "storage": farm.storage.check})
    ok = all(v == "ok" for v in checks.values())
    body = Health(ok=ok, checks=checks if admin else None)
    return JSONResponse(body.model_dump(exclude_none=True), 200 if ok else 503)


def run_checks(probes: dict[str, Callable[[], None]]) -> dict[str, str]:
    """Run the probes side by side, for at most HEALTH_TIMEOUT_S: "ok" or what went wrong."""
    futures = {name: _probes.submit(probe) for name, probe in probes.items()}
    wait_all(futures.values(), timeout=HEALTH_TIMEOUT_S)
    checks = {}
    for name, future in futures.items():
        if not future.done():
            checks[name] = f"no answer within {HEALTH_TIMEOUT_S:g} s"
        elif future.exception() is not None:
            exc = future.exception()
            checks[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
        else:
            checks[name] = "ok"
    return checks


def ping_db(farm: Farm) -> None:
    with farm.sessions() as session:
        session.execute(text("select 1"))


def ping_broker(farm: Farm) -> None:
    with farm.celery.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)


@router.get("/metrics", response_class=Response, dependencies=[Admin],
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, 401: {"model": Problem},
                       403: {"model": Problem}, 429: {"model": Problem}, **UNAVAILABLE})
def metrics(farm: FarmDep) -> Response:
    """Prometheus metrics (admin token): jobs by state and kind, queue depth, batch sizes,
    device seconds, job latency."""
    return Response(generate_latest(farm.metrics), media_type=CONTENT_TYPE_LATEST)
