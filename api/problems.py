"""Problem responses: every failure answers ``{"detail": ...}`` (or a ValidationProblem naming
each bad item), never a traceback. What only operators should see (hosts, exception text)
goes to the log."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa

from api.schemas import LineProblem, Problem, ValidationProblem
from jobs.errors import BudgetExceeded, ManifestError, StorageError
from storage.errors import ObjectNotFound, StorageUnavailable

log = logging.getLogger("genfarm.api")

RETRY_AFTER_S = 5
CONNECTION_FAILURES = (sa.OperationalError, sa.InterfaceError, sa.DisconnectionError,
                       sa.TimeoutError)


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(Problem(detail=detail).model_dump(), status, headers=headers)


def invalid(exc: ManifestError) -> JSONResponse:
    """422 naming every bad item (the first thousand): line, field, what was expected."""
    return JSONResponse(ValidationProblem(
        detail=f"{len(exc.errors)} error(s); nothing was submitted",
        errors=[LineProblem(line=e.line, field=e.field, message=e.message)
                for e in exc.errors[:1000]]).model_dump(), 422)


def unavailable(what: str) -> JSONResponse:
    return problem(503, f"the {what} is unavailable; try again shortly",
                   {"Retry-After": str(RETRY_AFTER_S)})


def _where(request: Request) -> str:
    return f"{request.method} {request.url.path}"


async def _manifest_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ManifestError)
    return invalid(exc)


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, CONNECTION_FAILURES) or (
            isinstance(exc, sa.DBAPIError) and exc.connection_invalidated):
        log.warning("%s: database unavailable: %s", _where(request), str(exc).splitlines()[0])
        return unavailable("database")
    log.error("%s: database error", _where(request), exc_info=exc)
    return problem(500, "internal error (logged)")


async def _storage_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, StorageUnavailable):
        log.warning("%s: storage unavailable: %s", _where(request), exc)
        return unavailable("object storage")
    if isinstance(exc, ObjectNotFound):
        return problem(404, "not found in storage")
    log.error("%s: storage error", _where(request), exc_info=exc)
    return problem(502, "the object storage refused the request")


async def _over_budget(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BudgetExceeded)
    return problem(402, str(exc))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises after this answer, so the server logs the traceback once
    return problem(500, "internal error (logged)")


def install(app: FastAPI) -> None:
    """Map failures to problem responses: the database or storage unreachable is 503 with
    Retry-After, a bad manifest 422, anything unforeseen a bare 500."""
    handlers: list[tuple[Any, Any]] = [
        (ManifestError, _manifest_error), (BudgetExceeded, _over_budget),
        (sa.SQLAlchemyError, _database_error),
        (StorageError, _storage_error), (Exception, _unexpected)]
    for exc_class, handler in handlers:
        app.add_exception_handler(exc_class, handler)
