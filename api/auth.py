"""Who is calling: a project's bearer token (it sees only its project) or the operators' admin
token (farm-wide figures). Every token has a rate limit; so has every client address for
requests without a valid token, so guessing tokens is as slow as anything else."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.deps import Farm, get_farm
from api.ratelimit import retry_after
from jobs.settings import Settings
from jobs.tokens import digest, project_for

bearer = HTTPBearer(auto_error=False, description="A project's API token: `genfarm token create`.")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


@dataclass
class Caller:
    project: str
    token_digest: str


def client_address(request: Request) -> str:
    """The peer's address (a trusted proxy's X-Forwarded-For where configured, see app.py)."""
    return request.client.host if request.client else "unknown"


def too_many(wait: float) -> HTTPException:
    return HTTPException(429, "rate limit exceeded", headers={"Retry-After": retry_after(wait)})


def _refused(farm: Farm, request: Request, detail: str) -> HTTPException:
    """A request without a valid token: it counts against its client address."""
    wait = farm.limiter.take("client:" + client_address(request))
    if wait:
        return too_many(wait)
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def _presented(farm: Farm, request: Request, credentials: HTTPAuthorizationCredentials | None) -> str:
    """The bearer token, once the client address is not over its limit of failed attempts."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _refused(farm, request, "missing bearer token")
    # checked before the token is looked up: an address that keeps failing learns nothing more
    wait = farm.limiter.wait("client:" + client_address(request))
    if wait:
        raise too_many(wait)
    return credentials.credentials


def _count(farm: Farm, token: str) -> str:
    key = digest(token)
    wait = farm.limiter.take(key)
    if wait:
        raise too_many(wait)
    return key


def is_admin(settings: Settings, token: str) -> bool:
    """Whether ``token`` is the operators' token (GENFARM_API_ADMIN_TOKEN, plain or sha256:HEX)."""
    if settings.api_admin_token is None:
        return False
    wanted = settings.api_admin_token.get_secret_value()
    wanted = wanted[len("sha256:"):].lower() if wanted.startswith("sha256:") else digest(wanted)
    return hmac.compare_digest(digest(token), wanted)


def current_caller(request: Request, credentials: Credentials) -> Caller:
    farm = get_farm(request)
    token = _presented(farm, request, credentials)
    with farm.sessions() as session:
        project = project_for(session, token)
    if project is None:
        raise _refused(farm, request, "invalid or revoked token")
    return Caller(project, _count(farm, token))


def require_admin(request: Request, credentials: Credentials) -> None:
    """The admin token, else 401 (no or bad token) or 403 (a project's token)."""
    farm = get_farm(request)
    token = _presented(farm, request, credentials)
    if is_admin(farm.settings, token):
        _count(farm, token)
        return
    with farm.sessions() as session:
        project = project_for(session, token)
    if project is None:
        raise _refused(farm, request, "invalid or revoked token")
    _count(farm, token)
    raise HTTPException(403, "farm-wide figures need the admin token (GENFARM_API_ADMIN_TOKEN)")


def admin_or_anyone(request: Request, credentials: Credentials) -> bool:
    """True for the admin token; anyone else is served too, as an anonymous caller. A wrong
    token counts against the client address like any failed attempt."""
    if credentials is None:
        return False
    farm = get_farm(request)
    key = "client:" + client_address(request)
    if farm.limiter.wait(key):
        return False
    if is_admin(farm.settings, credentials.credentials):
        return True
    farm.limiter.take(key)
    return False


Auth = Annotated[Caller, Depends(current_caller)]
Admin = Depends(require_admin)
MaybeAdmin = Annotated[bool, Depends(admin_or_anyone)]
