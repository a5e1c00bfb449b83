"""Webhooks: the caller's project's default URL and secret, and a batch's deliveries."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel, ConfigDict, Field

from api.auth import Auth
from api.deps import FarmDep
from api.routes import REFUSALS
from api.routes.batches import own_batch
from api.schemas import Problem, RequestProblem
from jobs.labels import InvalidMeta
from jobs.webhooks import KEEP, WebhookConfig, clear, configure, deliveries_of, get_config

router = APIRouter(tags=["webhooks"])


class WebhookView(BaseModel):
    url: str | None = Field(description="Where the project's batches notify when they name no "
                            "URL of their own; null: nowhere.")
    has_secret: bool = Field(description="Whether deliveries have a secret to be signed with.")
    updated_at: datetime | None
    secret: str | None = Field(None, description="The signing secret: only in the answer that "
                               "made or rotated it, never again. Receivers check X-Genfarm-"
                               "Signature (HMAC-SHA256 of '<t>.<body>') with it.")


class WebhookUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, description="The default URL (http or https); null removes "
                            "it; absent leaves it as it is.")
    rotate_secret: bool = Field(False, description="Make a new secret (the old one stops "
                                "working at once). A project's first PUT always makes one.")


class AttemptView(BaseModel):
    at: datetime
    status_code: int | None = Field(description="The receiver's answer; null when none came.")
    error: str | None = Field(description="Why it was no delivery: HTTP 500, connection "
                              "refused, timed out ...")
    seconds: float


class DeliveryView(BaseModel):
    id: str = Field(description="Sent as X-Genfarm-Delivery, the same on every retry.")
    event: str
    url: str
    status: str = Field(description="pending (a next attempt is due at next_attempt_at), "
                        "delivered or failed (out of attempts).")
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None
    last_error: str | None
    attempts: list[AttemptView]


class DeliveryList(BaseModel):
    items: list[DeliveryView]


def _view(config: WebhookConfig) -> WebhookView:
    return WebhookView(url=config.url, has_secret=config.has_secret,
                       updated_at=config.updated_at, secret=config.secret)


@router.get("/v1/webhook", response_model=WebhookView, responses=REFUSALS)
def get_webhook(who: Auth, farm: FarmDep) -> Any:
    """The project's default webhook URL and whether it has a secret (never the secret)."""
    with farm.sessions() as session:
        return _view(get_config(session, who.project))


@router.put("/v1/webhook", response_model=WebhookView,
            responses={422: {"model": Problem | RequestProblem}, **REFUSALS})
def put_webhook(body: WebhookUpdate, who: Auth, farm: FarmDep) -> Any:
    """Set the default URL and make the secret (the first time, or with ``rotate_secret``):
    the answer that makes it is the only one that shows it."""
    url = body.url if "url" in body.model_fields_set else KEEP
    try:
        with farm.sessions.begin() as session:
            return _view(configure(session, who.project, url=url, rotate=body.rotate_secret))
    except InvalidMeta as exc:
        raise HTTPException(422, str(exc)) from None


@router.delete("/v1/webhook", status_code=204, response_class=Response, responses=REFUSALS)
def delete_webhook(who: Auth, farm: FarmDep) -> Response:
    """Remove the default URL and the secret (a batch that names its own URL still notifies
    it, signed with a new secret that a PUT with ``rotate_secret`` shows)."""
    with farm.sessions.begin() as session:
        clear(session, who.project)
    return Response(status_code=204)


@router.get("/v1/batches/{batch_id}/deliveries", response_model=DeliveryList,
            responses=REFUSALS)
def list_deliveries(batch_id: str, who: Auth, farm: FarmDep) -> Any:
    """The batch's webhook deliveries (one each time it finished), with every attempt."""
    with farm.sessions() as session:
        batch = own_batch(session, batch_id, who)
        found = deliveries_of(session, batch.id)
    return DeliveryList(items=[DeliveryView(
        id=d.id, event=d.event, url=d.url, status=d.status,
        next_attempt_at=d.next_attempt_at if d.status == "pending" else None,
        created_at=d.created_at, delivered_at=d.delivered_at, last_error=d.last_error,
        attempts=[AttemptView(at=a.at, status_code=a.status_code, error=a.error,
                              seconds=a.seconds) for a in attempts])
        for d, attempts in found])
