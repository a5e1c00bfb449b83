"""What the routes share, made once by the app factory and handed to them as a dependency."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from prometheus_client import CollectorRegistry
from sqlalchemy.orm import Session, sessionmaker

from api.ratelimit import RateLimiter
from jobs.catalog import Catalog
from jobs.settings import Settings
from jobs.submit import Publisher, Submitter
from storage import Storage


@dataclass
class Farm:
    """The API's collaborators: settings, database sessions, storage, the broker's publisher."""

    settings: Settings
    sessions: sessionmaker[Session]
    storage: Storage
    catalog: Catalog
    celery: Any
    publish: Publisher
    submitter: Submitter
    limiter: RateLimiter
    metrics: CollectorRegistry = field(default_factory=CollectorRegistry)


def get_farm(request: Request) -> Farm:
    farm: Farm = request.app.state.farm
    return farm


FarmDep = Annotated[Farm, Depends(get_farm)]
