"""Checks on what a request carries before any of it reaches the database: body size, and NUL
characters (PostgreSQL cannot store them in text, and refuses the whole statement)."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

NUL_MESSAGE = "contains a NUL character (\\u0000), which cannot be stored"


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


def find_nul(value: Any) -> str | None:
    """The dotted path of the first string (key or value) in parsed JSON that holds a NUL, or
    None. Iterative: the depth of what a client sends does not matter."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                return path
        elif isinstance(node, dict):
            for key, item in reversed(list(node.items())):
                sub = f"{path}.{key}" if path else str(key)
                if "\x00" in str(key):
                    return sub
                stack.append((sub, item))
        elif isinstance(node, list):
            stack.extend((f"{path}.{i}" if path else str(i), item)
                         for i, item in reversed(list(enumerate(node))))
    return None


def refuse_nul(request: Request) -> None:
    """A path or query parameter with a NUL is a 422 naming it (an app-wide dependency: every
    route, present and future, gets it)."""
    problems = [{"type": "string_nul", "loc": (where, name), "msg": NUL_MESSAGE}
                for where, params in (("path", request.path_params.items()),
                                      ("query", request.query_params.multi_items()))
                for name, value in params if "\x00" in name or "\x00" in str(value)]
    if problems:
        raise RequestValidationError(problems)

