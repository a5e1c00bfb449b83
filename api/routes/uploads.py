"""Uploads: plates, masks and audio put under the caller's project, for manifests to reference."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field

from api.auth import Auth
from api.deps import FarmDep
from api.routes import REFUSALS
from api.schemas import Problem
from storage.errors import BadKey
from storage.uploads import DEFAULT_PREFIX, LIST_LIMIT, list_uploads, upload

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])

# Uploads that may hold a worker thread at once. Every blocking route shares one pool (40
# threads): with a slow bucket, uploads queue here instead of taking the threads that health
# checks, polls and submissions need.
UPLOAD_THREADS = anyio.CapacityLimiter(8)

# 400, not 422: FastAPI's 422 is its own validation body (a list), documented for every route
BAD_KEY: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "A folder or name that cannot be used (it says why)."}}


class UploadResult(BaseModel):
    key: str = Field(description="Relative to the project: what a manifest names, e.g. "
                                 "{\"key\": \"in/plate.png\"}.")
    sha256: str
    bytes: int
    content_type: str
    skipped: bool = Field(description="An identical object (same sha256) was there already.")


class UploadItem(BaseModel):
    key: str
    bytes: int


class UploadList(BaseModel):
    items: list[UploadItem]
    truncated: bool = Field(description="More uploads lie under the prefix than limit.")


BODY_DOC = {"requestBody": {"required": True, "description": "The file's bytes, as they are "
                            "(any content type; the stored type comes from the bytes and name).",
                            "content": {"application/octet-stream": {
                                "schema": {"type": "string", "format": "binary"}}}}}


@router.put("/{path:path}", response_model=UploadResult, openapi_extra=BODY_DOC,
            responses={200: {"model": UploadResult, "description": "Identical to the object "
                             "already there (same sha256): nothing was written."},
                       201: {"model": UploadResult, "description": "Stored."},
                       413: {"model": Problem}, **BAD_KEY, **REFUSALS})
async def put_upload(path: str, request: Request, response: Response, who: Auth,
                     farm: FarmDep) -> Any:
    """Store the body as ``path`` (``FOLDER/NAME``, e.g. ``in/plate.png``) in the caller's
    project, with its sha256; a manifest then names it as ``{"key": "in/plate.png"}``. Bodies
    are limited to GENFARM_API_MAX_BODY_BYTES (413 beyond)."""
    folder, slash, name = path.rpartition("/")
    if not folder:
        raise HTTPException(400, f"path {path[:200]!r}: expected FOLDER/NAME, e.g. in/plate.png")
    body = await request.body()  # read on the loop; hashing and storing run in a thread
    try:
        # a thread, not off_loop: one large bytes object, nothing for the collector to walk
        done = await anyio.to_thread.run_sync(
            upload, farm.storage, who.project, name, body, folder + slash,  # in//x: refused
            limiter=UPLOAD_THREADS)
    except BadKey as exc:
        raise HTTPException(400, str(exc)) from None
    response.status_code = 200 if done.skipped else 201
    return UploadResult(key=done.key, sha256=done.sha256, bytes=done.bytes,
                        content_type=done.content_type, skipped=done.skipped)


@router.get("", response_model=UploadList, responses={**BAD_KEY, **REFUSALS})
def get_uploads(who: Auth, farm: FarmDep,
                prefix: Annotated[str, Query(max_length=512, description="A folder of the "
                                             "project.")] = DEFAULT_PREFIX,
                limit: Annotated[int, Query(ge=1, le=LIST_LIMIT)] = LIST_LIMIT) -> Any:
    """The project's uploads under ``prefix`` (keys relative to the project, sorted)."""
    try:
        items, more = list_uploads(farm.storage, who.project, prefix, limit)
    except BadKey as exc:
        raise HTTPException(400, str(exc)) from None
    return UploadList(items=items, truncated=more)
