"""A unit's time limit, as the worker process meets it.

Celery's soft limit (GENFARM_UNIT_TIME_LIMIT) is an exception raised in the process's main
thread wherever it is. It is an ``Exception``, so a broad handler catches it; and raised while
the database driver waits on the server, it leaves the connection busy, so the session's
rollback fails in its place: an OperationalError whose context is the limit. Handlers that
would go on after either ask here first.
"""

from __future__ import annotations

from celery.exceptions import SoftTimeLimitExceeded


def time_limit_of(exc: BaseException | None) -> SoftTimeLimitExceeded | None:
    """The unit's time limit, if it is ``exc`` or behind it (its cause or context)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, SoftTimeLimitExceeded):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def reraise_time_limit(exc: BaseException) -> None:
    """Raise the unit's time limit where it is behind ``exc``; otherwise nothing."""
    limit = time_limit_of(exc)
    if limit is not None:
        raise limit
