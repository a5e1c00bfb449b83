"""Webhooks: a batch that finishes notifies a URL with a signed JSON summary.

The delivery row is written in the transaction that finalizes the batch (an outbox), and no
HTTP happens there: a receiver that is down or slow never delays a batch. A :class:`Deliverer`
(a background thread in every worker, one bounded pass in ``genfarm reconcile``) leases due
rows with a conditional update, POSTs each from a small thread pool under a hard deadline,
records every attempt and retries with exponential backoff. Delivery is at least once: a
receiver dedupes on ``X-Genfarm-Delivery``. See docs/webhooks.md.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import secrets
import socket
import ssl
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum, StrEnum
from typing import Any, Literal

from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from jobs import __version__
from jobs.models import Batch, Project, ProjectWebhook, WebhookAttempt, WebhookDelivery, utcnow
from jobs.receivers import ReceiverRefused, post
from jobs.settings import Settings
from jobs.sql import rowcount

log = logging.getLogger("genfarm.webhooks")

EVENT_FINISHED = "batch.finished"
SIGNATURE_HEADER = "X-Genfarm-Signature"
LEASE_MARGIN_S = 30.0  # beyond an attempt's deadline: time to record it
ERROR_CHARS = 300


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # its next attempt (or its first) is due at next_attempt_at
    DELIVERED = "delivered"  # the receiver answered 2xx
    FAILED = "failed"  # out of attempts; nothing retries it


# -- a project's settings: default URL and secret -------------------------------------------------
@dataclass(frozen=True)
class WebhookConfig:
    """A project's webhook settings as shown: ``secret`` only right after it was made."""

    project: str
    url: str | None
    has_secret: bool
    updated_at: datetime | None
    secret: str | None = None


class _Keep(Enum):
    KEEP = "keep"


KEEP = _Keep.KEEP  # configure(url=KEEP): leave the default URL as it is


def new_secret() -> str:
    return secrets.token_hex(32)


def get_config(session: Session, project: str) -> WebhookConfig:
    row = session.get(ProjectWebhook, project)
    if row is None:
        return WebhookConfig(project, None, False, None)
    return WebhookConfig(project, row.url, True, row.updated_at)


def configure(session: Session, project: str, *, url: str | None | Literal[_Keep.KEEP] = KEEP,
              rotate: bool = False) -> WebhookConfig:
    """Set ``project``'s default URL (None: no default) and make its secret when it has none
    or ``rotate``; the returned config carries the secret only then, the one time it is shown.

    The secret is stored as it is, not hashed: every delivery is signed with it (HMAC-SHA256),
    so the farm must be able to read it back. Anyone who can read the database can sign."""
    from jobs.labels import check_webhook_url

    if url is not KEEP and url is not None:
        url = check_webhook_url(url)
    if session.get(Project, project) is None:
        session.add(Project(name=project, created_at=utcnow()))
        session.flush()
    row = session.get(ProjectWebhook, project)
    made = None
    if row is None:
        made = new_secret()
        row = ProjectWebhook(project=project, url=None, secret=made)
        session.add(row)
    elif rotate:
        made = row.secret = new_secret()
    if url is not KEEP:
        row.url = url
    row.updated_at = utcnow()
    session.flush()
    return WebhookConfig(project, row.url, True, row.updated_at, made)


def clear(session: Session, project: str) -> bool:
    """Forget ``project``'s default URL and secret. A batch that names its own URL still
    notifies, signed with a new secret made at its first delivery (see it with a rotation)."""
    return bool(rowcount(session.execute(delete(ProjectWebhook).where(
        ProjectWebhook.project == project).execution_options(synchronize_session=False))))


def signing_secret(sessions: sessionmaker[Session], project: str) -> str:
    """The project's secret, made now if it has none (two workers racing make one)."""
    with sessions() as session:
        secret = session.scalar(select(ProjectWebhook.secret)
                                .where(ProjectWebhook.project == project))
    if secret is not None:
        return secret
    try:
        with sessions.begin() as session:
            session.add(ProjectWebhook(project=project, url=None, secret=new_secret(),
                                       updated_at=utcnow()))
        log.info("project %s had no webhook secret: one was made (`genfarm webhook set "
                 "--project %s --rotate-secret` shows a new one)", project, project)
    except IntegrityError:
        pass  # another worker made it first
    with sessions() as session:
        return session.scalars(select(ProjectWebhook.secret)
                               .where(ProjectWebhook.project == project)).one()


# -- enqueue: inside the batch's finalization -------------------------------------------------
def enqueue_finished(session: Session, batch: Batch) -> WebhookDelivery | None:
    """A pending ``batch.finished`` delivery for ``batch``, to its own URL or else its project's
    default, added to ``session`` (the finalizing transaction); None when neither is set."""
    url = batch.webhook_url or session.scalar(
        select(ProjectWebhook.url).where(ProjectWebhook.project == batch.project))
    if not url:
        return None
    now = utcnow()
    delivery_id = uuid.uuid4().hex
    row = WebhookDelivery(id=delivery_id, project=batch.project, batch_id=batch.id, url=url,
                          event=EVENT_FINISHED, payload=finished_payload(session, batch, delivery_id),
                          status=DeliveryStatus.PENDING.value, attempts=0, next_attempt_at=now,
                          created_at=now)
    session.add(row)
    return row


def finished_payload(session: Session, batch: Batch, delivery_id: str) -> dict[str, Any]:
    """What a receiver learns: this batch's summary, nothing of any other batch or project."""
    from jobs.batches import summarize

    s = summarize(session, batch).as_dict()
    keys = ("id", "project", "name", "labels", "status", "source", "jobs", "counts",
            "device_seconds", "created_at", "finished_at", "manifest_key")
    return {"event": EVENT_FINISHED, "delivery_id": delivery_id,
            "batch": {k: s.get(k) for k in keys}}


# -- signing -----------------------------------------------------------------------------------
def body_of(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The X-Genfarm-Signature value: ``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, body: bytes, header: str, tolerance_s: float = 300.0,
           now: float | None = None) -> bool:
    """Whether ``header`` (X-Genfarm-Signature) signs ``body`` (the raw request bytes) with
    ``secret``, made within ``tolerance_s`` of ``now``: what a receiver checks. Standard library
    only, so a receiver can copy it (docs/webhooks.md)."""
    fields = [part.strip().partition("=") for part in header.split(",")]
    stamps = [v for k, _, v in fields if k == "t"]
    if len(stamps) != 1 or not stamps[0].isdigit():
        return False
    if abs((time.time() if now is None else now) - int(stamps[0])) > tolerance_s:
        return False  # an old message replayed, or a clock far off
    wanted = hmac.new(secret.encode(), f"{stamps[0]}.".encode() + body, hashlib.sha256).hexdigest()
    return any(k == "v1" and hmac.compare_digest(v, wanted) for k, _, v in fields)


# -- leasing and recording --------------------------------------------------------------------
@dataclass(frozen=True)
class Policy:
    """How deliveries are sent: the deadline of one attempt and the retry schedule."""

    timeout_s: float = 5.0
    max_attempts: int = 8
    backoff_s: float = 10.0
    backoff_max_s: float = 3600.0
    allow_private: bool = True  # loopback and private networks (see jobs/receivers.py)

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(settings.webhook_timeout_seconds, settings.webhook_max_attempts,
                   settings.webhook_backoff_seconds, settings.webhook_backoff_max_seconds,
                   settings.webhook_allow_private)

    def delay(self, attempts: int) -> float:
        """Seconds after attempt number ``attempts`` (1, 2 ...) failed: 10, 30, 90 ... capped."""
        return min(self.backoff_max_s, self.backoff_s * 3.0 ** (attempts - 1))

    @property
    def lease_s(self) -> float:
        return self.timeout_s + LEASE_MARGIN_S


@dataclass(frozen=True)
class Lease:
    """A delivery held by one deliverer until ``until`` (its lease, also the proof it holds it)."""

    id: str
    project: str
    url: str
    event: str
    payload: dict[str, Any]
    attempts: int
    until: datetime


def lease_due(sessions: sessionmaker[Session], limit: int, lease_s: float) -> list[Lease]:
    """Up to ``limit`` pending deliveries that are due and held by nobody, each taken with a
    conditional update: of two deliverers racing for one, exactly one gets it."""
    now = utcnow()
    free = or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until < now)
    pending = WebhookDelivery.status == DeliveryStatus.PENDING.value
    taken: list[Lease] = []
    with sessions.begin() as session:
        rows = session.scalars(select(WebhookDelivery).where(
            pending, WebhookDelivery.next_attempt_at <= now, free)
            .order_by(WebhookDelivery.next_attempt_at).limit(limit)).all()
        for row in rows:
            until = now + timedelta(seconds=lease_s)
            changed = rowcount(session.execute(
                update(WebhookDelivery).where(WebhookDelivery.id == row.id, pending, free,
                                              WebhookDelivery.attempts == row.attempts)
                .values(lease_until=until).execution_options(synchronize_session=False)))
            if changed:
                taken.append(Lease(row.id, row.project, row.url, row.event, dict(row.payload),
                                   row.attempts, until))
    return taken


def record(sessions: sessionmaker[Session], lease: Lease, policy: Policy, at: datetime,
           status_code: int | None, error: str | None, seconds: float) -> DeliveryStatus:
    """Record one attempt and what follows: delivered, a retry after backoff, or failed."""
    attempts = lease.attempts + 1
    now = utcnow()
    ok = status_code is not None and 200 <= status_code < 300
    if ok:
        status = DeliveryStatus.DELIVERED
    elif attempts >= policy.max_attempts:
        status = DeliveryStatus.FAILED
    else:
        status = DeliveryStatus.PENDING
    values: dict[str, Any] = {"attempts": attempts, "status": status.value, "lease_until": None,
                              "last_error": None if ok else error}
    if ok:
        values["delivered_at"] = now
    elif status is DeliveryStatus.PENDING:
        values["next_attempt_at"] = now + timedelta(seconds=policy.delay(attempts))
    with sessions.begin() as session:
        session.add(WebhookAttempt(delivery_id=lease.id, at=at, status_code=status_code,
                                   error=error, seconds=round(seconds, 4)))
        # guarded by the lease: a deliverer that lost it (it stalled past it) changes nothing
        session.execute(update(WebhookDelivery).where(
            WebhookDelivery.id == lease.id, WebhookDelivery.lease_until == lease.until)
            .values(**values).execution_options(synchronize_session=False))
    return status


def deliveries_of(session: Session, batch_id: str) -> list[tuple[WebhookDelivery,
                                                                 list[WebhookAttempt]]]:
    """A batch's deliveries, oldest first, each with its attempts in order."""
    rows = list(session.scalars(select(WebhookDelivery).where(WebhookDelivery.batch_id == batch_id)
                                .order_by(WebhookDelivery.created_at, WebhookDelivery.id)))
    attempts: dict[str, list[WebhookAttempt]] = {r.id: [] for r in rows}
    if rows:
        for a in session.scalars(select(WebhookAttempt).where(
                WebhookAttempt.delivery_id.in_(list(attempts))).order_by(WebhookAttempt.id)):
            attempts[a.delivery_id].append(a)
    return [(r, attempts[r.id]) for r in rows]


# -- HTTP (jobs/receivers.py sends) -----------------------------------------------------------
def describe(exc: BaseException, timeout_s: float) -> str:
    """An attempt's failure in a few words (never the receiver's answer body)."""
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout_s:g} s"
    if isinstance(exc, ReceiverRefused):
        return str(exc)
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "host name not resolved"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"[:ERROR_CHARS]
    if isinstance(exc, http.client.HTTPException):
        return f"bad HTTP answer ({type(exc).__name__})"
    return (str(exc) or type(exc).__name__)[:ERROR_CHARS]


# -- the deliverer -----------------------------------------------------------------------------
class Deliverer:
    """Sends due deliveries, each on a thread of a small pool, so one slow receiver holds up only
    its own thread. ``start`` runs it in a daemon thread; ``deliver_due`` is one bounded pass."""

    def __init__(self, sessions: sessionmaker[Session], policy: Policy | None = None, *,
                 threads: int = 4, interval_s: float = 5.0) -> None:
        self.sessions = sessions
        self.policy = policy or Policy()
        self.threads = threads
        self.interval_s = interval_s
        self.user_agent = f"genfarm/{__version__}"
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="genfarm-webhook")
        self._lock = threading.Lock()
        self._in_flight = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings: Settings, sessions: sessionmaker[Session]) -> Deliverer:
        return cls(sessions, Policy.from_settings(settings), threads=settings.webhook_threads,
                   interval_s=settings.webhook_interval_seconds)

    def send(self, lease: Lease) -> DeliveryStatus:
        """One attempt of ``lease``: sign, POST, record."""
        body = body_of(lease.payload)
        # outside the try: a database failure is no attempt (and its text, which may name
        # internal hosts, must not become an error the project reads)
        secret = signing_secret(self.sessions, lease.project)
        headers = {"Content-Type": "application/json", "User-Agent": self.user_agent,
                   "X-Genfarm-Event": lease.event, "X-Genfarm-Delivery": lease.id,
                   "X-Genfarm-Attempt": str(lease.attempts + 1),
                   SIGNATURE_HEADER: sign(secret, body, int(time.time()))}
        at = utcnow()
        started = time.perf_counter()
        status_code: int | None = None
        error: str | None = None
        try:
            status_code = post(lease.url, body, headers, self.policy.timeout_s,
                               self.policy.allow_private)
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
        except Exception as exc:  # noqa: BLE001 - recorded as the attempt's error
            error = describe(exc, self.policy.timeout_s)
        seconds = time.perf_counter() - started
        status = record(self.sessions, lease, self.policy, at, status_code, error, seconds)
        if status is DeliveryStatus.FAILED:
            log.warning("webhook %s to %s failed for good after %d attempts: %s", lease.id,
                        lease.url, lease.attempts + 1, error)
        return status

    def deliver_due(self, max_seconds: float) -> dict[str, int]:
        """Send what is due now, in rounds of up to ``threads`` at once, for about
        ``max_seconds`` at most (a round ends within the attempt deadline); counts by outcome."""
        deadline = time.monotonic() + max_seconds
        counts: dict[str, int] = {}
        while time.monotonic() < deadline:
            leases = lease_due(self.sessions, self.threads, self.policy.lease_s)
            for status in self._pool.map(self._send_safely, leases):
                if status is not None:
                    counts[status.value] = counts.get(status.value, 0) + 1
            if len(leases) < self.threads:
                break
        return counts

    def _send_safely(self, lease: Lease) -> DeliveryStatus | None:
        try:
            return self.send(lease)
        except Exception:  # noqa: BLE001 - the lease expires and another attempt follows
            log.warning("webhook delivery %s: the database failed; it is sent again once its "
                        "lease expires", lease.id, exc_info=True)
            return None

    # background -------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="genfarm-webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop leasing; wait for attempts under way (each ends by its deadline)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.policy.lease_s)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:  # noqa: BLE001 - the database may be away; the next tick retries
                log.warning("webhook pass failed", exc_info=True)
            self._wake.wait(self.interval_s)
            self._wake.clear()

    def _tick(self) -> None:
        """Lease as many due deliveries as there are idle threads, and start them."""
        with self._lock:
            free = self.threads - self._in_flight
        if free <= 0:
            return
        for lease in lease_due(self.sessions, free, self.policy.lease_s):
            with self._lock:
                self._in_flight += 1
            self._pool.submit(self._send_safely, lease).add_done_callback(self._done)

    def _done(self, _: Any) -> None:
        with self._lock:
            self._in_flight -= 1
        self._wake.set()  # a thread is free: more may be due
