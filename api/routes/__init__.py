"""The API's routes, one module per resource."""

from __future__ import annotations

from typing import Any

from api.schemas import Problem

UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": Problem, "description": "The database or the object storage is unreachable; "
                                           "retry after Retry-After seconds."}}
REFUSALS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem}, 404: {"model": Problem}, 429: {"model": Problem}, **UNAVAILABLE}
