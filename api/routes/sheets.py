"""Contact sheets: a page of a batch's outputs as one labelled grid (PNG)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response

from api.auth import Auth
from api.deps import FarmDep
from api.routes import REFUSALS
from api.routes.batches import own_batch
from jobs.sheets import NoSuchPage, plan_sheet, render

router = APIRouter(prefix="/v1/batches", tags=["batches"])


# A plain def: drawing is CPU work and reading previews blocks, so it runs in the thread pool.
@router.get("/{batch_id}/sheet.png", response_class=Response,
            responses={200: {"content": {"image/png": {}},
                             "description": "The page; X-Genfarm-Page and X-Genfarm-Pages "
                                            "say which of how many."}, **REFUSALS})
def get_sheet(batch_id: str, who: Auth, farm: FarmDep,
              page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
              per_page: Annotated[int, Query(ge=1, le=256, description="Tiles a page.")] = 64,
              tile: Annotated[int, Query(ge=48, le=320, description="Tile size in pixels.")] = 160,
              ) -> Response:
    """A contact sheet of the batch: one tile per job in index order (its first image, a
    video's first frame, or its state), labelled with its index and the params that vary
    across the batch. A page past the last is 404."""
    with farm.sessions() as session:
        batch = own_batch(session, batch_id, who)
        try:
            plan = plan_sheet(session, batch, page, per_page)
        except NoSuchPage as exc:
            raise HTTPException(404, str(exc)) from None
    png = render(plan, farm.storage, tile)
    return Response(png, media_type="image/png", headers={
        "X-Genfarm-Page": str(plan.page), "X-Genfarm-Pages": str(plan.pages),
        "Cache-Control": "no-cache"})
