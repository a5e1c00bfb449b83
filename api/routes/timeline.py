"""A batch as an editorial timeline (OTIO, EDL, FCP 7 XML, FCPXML, AAF, MLT)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Response

from api.auth import Auth
from api.deps import FarmDep
from api.routes import REFUSALS
from api.routes.batches import own_batch

router = APIRouter(prefix="/v1/batches", tags=["batches"])

TimelineFormat = Literal["otio", "edl", "fcp7", "fcpxml", "aaf", "mlt"]  # jobs.timeline.FORMATS


# A plain def: building reads storage (cuts.json) and writing is CPU work: the thread pool.
@router.get("/{batch_id}/timeline", response_class=Response,
            responses={200: {"content": {"application/json": {}, "text/plain": {},
                                         "application/xml": {},
                                         "application/octet-stream": {}},
                             "description": "The timeline file, named in Content-Disposition."},
                       501: {"description": "The server lacks the timeline extra."},
                       **REFUSALS})
def get_timeline(batch_id: str, who: Auth, farm: FarmDep,
                 format: Annotated[TimelineFormat, Query(  # noqa: A002 - the query's name
                     description="otio, edl (CMX 3600), fcp7 (FCP 7 XML), fcpxml, aaf or mlt."
                 )] = "otio",
                 media: Annotated[Literal["relative", "url"], Query(
                     description="relative: paths as `genfarm pull` lays the batch out; url: "
                                 "presigned URLs of the objects (S3).")] = "relative",
                 still_seconds: Annotated[float | None, Query(
                     gt=0, le=3600, description="How long a still stays up [default: one bar "
                                                "of the batch's music, else 2 s].")] = None,
                 ) -> Response:
    """The batch's outputs on a video track in job order, a beat-cut video as one clip per
    segment, its music on an audio track, markers on beats and sections; whole frames at the
    video's rate. See docs/timeline.md for what each format carries."""
    from jobs.timeline import FORMATS, TimelineError, adapter_missing, build_timeline, export

    missing = adapter_missing(format)
    if missing:
        raise HTTPException(501, missing)
    with farm.sessions() as session:
        batch = own_batch(session, batch_id, who)
        try:
            made = build_timeline(session, farm.storage, batch.id, media=media,
                                  still_seconds=still_seconds)
        except TimelineError as exc:
            raise HTTPException(409, str(exc)) from None
        name = f"{batch.name or 'batch'}-{batch.id[:12]}"
    try:
        body = export(made, format)
    except TimelineError as exc:
        raise HTTPException(409, str(exc)) from None
    spec = FORMATS[format]
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in name)
    return Response(body, media_type=spec.content_type, headers={
        "Content-Disposition": f'attachment; filename="{safe}{spec.suffix}"',
        "Cache-Control": "no-cache"})
