"""The HTTP API (FastAPI): `genfarm api` serves it. Routes are thin: jobs/ and storage/ do the work."""

from __future__ import annotations

import ipaddress

from fastapi import Depends, FastAPI

from api import problems
from api.deps import Farm
from api.guards import BodyLimit, refuse_nul
from api.metrics import FarmCollector, queue_depths
from api.ratelimit import RateLimiter
from api.routes import batch_jobs, batches, health, jobs, sheets, uploads, usage, webhooks
from api.routes import timeline as timeline_routes
from jobs import __version__
from jobs.catalog import load_catalog
from jobs.db import make_engine, session_factory
from jobs.reuse import model_identity
from jobs.settings import Settings
from jobs.submit import Submitter
from storage import open_storage
from workers.app import make_app, publisher


def create_app(settings: Settings) -> FastAPI:
    """The API for ``settings``: collaborators made once, routers, guards and problem answers."""
    app = FastAPI(title="genfarm", version=__version__, dependencies=[Depends(refuse_nul)],
                  description="Submit manifests of generation jobs, watch batches, fetch outputs.")
    engine = make_engine(settings.resolved_database_url(),
                         connect_timeout=settings.db_connect_timeout)
    sessions = session_factory(engine)
    storage = open_storage(settings.resolved_storage_url(), endpoint_url=settings.s3_endpoint_url)
    catalog = load_catalog(settings)
    celery = make_app(settings)
    publish = publisher(celery)
    farm = Farm(settings=settings, sessions=sessions, storage=storage, catalog=catalog,
                celery=celery, publish=publish,
                submitter=Submitter(sessions, publish, catalog, lambda: storage,
                                    unit_size=settings.unit_size,
                                    default_max_attempts=settings.max_attempts,
                                    aging_s=settings.priority_aging_seconds,
                                    identity=lambda model: model_identity(catalog, model,
                                                                          settings)),
                limiter=RateLimiter(settings.api_rate_per_minute, settings.api_rate_burst))
    farm.metrics.register(FarmCollector(sessions, lambda: queue_depths(settings, catalog)))
    app.state.farm, app.state.sessions, app.state.engine = farm, sessions, engine
    for router in (batches.router, batch_jobs.router, jobs.router, usage.router, health.router,
                   sheets.router, uploads.router, webhooks.router, timeline_routes.router):
        app.include_router(router)
    problems.install(app)
    app.add_middleware(BodyLimit, limit=settings.api_max_body_bytes)
    trusted = trusted_proxies(settings)
    if trusted:  # added last, so it runs first: the client address is settled before anything
        from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=trusted)
    return app


def trusted_proxies(settings: Settings) -> list[str]:
    """GENFARM_API_TRUSTED_PROXIES as a list, each entry checked: uvicorn would take a typo for
    a host name and silently trust nothing (or the wrong thing)."""
    entries = [p.strip() for p in settings.api_trusted_proxies.split(",") if p.strip()]
    for entry in entries:
        if entry != "*":
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"GENFARM_API_TRUSTED_PROXIES: {entry!r} is not an address or "
                                 "CIDR range (or *)") from None
    return entries
