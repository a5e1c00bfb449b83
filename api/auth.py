"""Bearer-token auth (a token sees only its project) and a per-token rate limit."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from jobs.tokens import digest, project_for

bearer = HTTPBearer(auto_error=False, description="A project's API token: `genfarm token create`.")


@dataclass
class Caller:
    project: str
    token_digest: str


class RateLimiter:
    """A token bucket per API token: ``rate`` requests a minute, bursts up to ``burst``."""

    def __init__(self, per_minute: float, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = burst
        self.buckets: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 if allowed now, else the seconds to wait."""
        now = time.monotonic()
        with self.lock:
            tokens, last = self.buckets.get(key, (float(self.burst), now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1:
                self.buckets[key] = (tokens - 1, now)
                return 0.0
            self.buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate


def authenticate(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Caller:
    state = request.app.state
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    with state.sessions() as session:
        project = project_for(session, credentials.credentials)
    if project is None:
        raise HTTPException(401, "invalid or revoked token", headers={"WWW-Authenticate": "Bearer"})
    key = digest(credentials.credentials)
    wait = state.limiter.take(key)
    if wait:
        raise HTTPException(429, "rate limit exceeded", headers={"Retry-After": f"{wait:.0f}"})
    return Caller(project, key)


def current_caller(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Caller:
    return authenticate(request, credentials)


Auth = Annotated[Caller, Depends(current_caller)]
