"""The SQLAlchemy models: the record of every project, batch, job, output and transition.

The schema is made only by the Alembic migrations in ``migrations/``; these
classes must match them (a test compares the two on SQLite and PostgreSQL).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    literal_column,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from jobs.states import BatchStatus, JobStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}


class Project(Base):
    __tablename__ = "projects"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Batch(Base):
    __tablename__ = "batches"
    __table_args__ = (Index("ix_batches_project_name", "project", "name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project: Mapped[str] = mapped_column(ForeignKey("projects.name"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=BatchStatus.ACTIVE.value)
    source: Mapped[str] = mapped_column(String(255), default="")
    job_count: Mapped[int] = mapped_column(Integer, default=0)
    manifest_key: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()
    name: Mapped[str] = mapped_column(String(128), default="", server_default="")
    # notified when the batch finishes (else the project's default URL, if it has one)
    webhook_url: Mapped[str | None] = mapped_column(String(2048))


class BatchLabel(Base):
    """A label of a batch (``--label shot=010``): what status, usage and listings filter by."""

    __tablename__ = "batch_labels"
    __table_args__ = (Index("ix_batch_labels_key_value", "key", "value"),)

    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))


def _only(status: str) -> dict[str, Any]:
    """A partial index's condition: the jobs of one status."""
    condition = text(f"status = '{status}'")
    return {"postgresql_where": condition, "sqlite_where": condition}


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        # claims and fills: queued jobs of one queue or batch key in claim order (rank, then
        # line), read from the index without sorting every queued job of the key. Each holds
        # only jobs of its status (see job_status_is): the way in for statements that name it,
        # whatever the statistics say
        Index("ix_jobs_queued_queue_rank", "queue", "rank", "index", **_only("queued")),
        Index("ix_jobs_queued_key_rank", "batch_key", "rank", "index", **_only("queued")),
        Index("ix_jobs_running_lease", "lease_expires_at", **_only("running")),
        Index("ix_jobs_waiting", "id", **_only("waiting")),
        Index("ix_jobs_fingerprint_status", "fingerprint", "status"),
        Index("ix_jobs_batch_line_status", "batch_id", "line", "status"),
        Index("ix_jobs_batch_status", "batch_id", "status"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id"))
    index: Mapped[int] = mapped_column(Integer)  # position in the expanded manifest
    line: Mapped[int | None] = mapped_column(Integer)  # the manifest line it came from
    kind: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(64), server_default="")  # a name of the models file
    queue: Mapped[str] = mapped_column(String(128), server_default="")  # where its units travel
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    batch_key: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    # claim order, lowest first: seconds since the epoch at submission less priority x the
    # aging step (GENFARM_PRIORITY_AGING_SECONDS), so a waiting job gains on newer ones
    rank: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    not_before: Mapped[datetime | None] = mapped_column()  # retry backoff
    published_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    error: Mapped[str | None] = mapped_column(Text)
    device_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    estimate_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    # what makes its outputs (kind, canonical params, model and weights, code version): a job
    # of the same project with the same fingerprint that succeeded is reused, not run again
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    reused_from: Mapped[str | None] = mapped_column(String(32))
    # what a waiting job waits for: [{"batch": ID, "line": N}] (a line) or [{"batch": ID}]
    waits_on: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    # share of a long job (a video) finished so far, 0 to 1; 1 once it succeeded
    progress: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")


def job_status_is(status: JobStatus) -> Any:
    """``jobs.status = 'queued'`` (or another status) with the status in the statement's text,
    not a parameter: the partial indexes of queued, running and waiting jobs serve only
    statements that name their status (SQLite never matches a parameter to an index's
    condition, nor does a plan PostgreSQL makes for any value)."""
    return Job.status == literal_column(f"'{status.value}'", String())


class Output(Base):
    __tablename__ = "outputs"
    __table_args__ = (UniqueConstraint("job_id", "name", name="uq_outputs_job_name"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    key: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger)
    content_type: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str] = mapped_column(String(255), default="")
    worker: Mapped[str | None] = mapped_column(String(128))


class Worker(Base):
    """A running worker and the models it serves, as it last said (it says so every
    reconciler pass, and forgets itself when it stops)."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    models: Mapped[list[str]] = mapped_column(JSON)
    started_at: Mapped[datetime] = mapped_column()
    seen_at: Mapped[datetime] = mapped_column()


class UnitPulse(Base):
    """A running work unit's sign of life: its lease owner, and when its worker last said so
    (every GENFARM_PULSE_SECONDS). A unit silent for GENFARM_PULSE_GRACE_SECONDS lost its
    worker: its jobs' leases end at once. One small row a unit, not a write per job."""

    __tablename__ = "unit_pulses"

    owner: Mapped[str] = mapped_column(String(128), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column()


class PassSize(Base):
    """The forward-pass size that made the most jobs a second for a batch key on a device and
    dtype (``key``: batch key|device|dtype), with the rates measured per size."""

    __tablename__ = "pass_sizes"

    key: Mapped[str] = mapped_column(String(320), primary_key=True)
    best: Mapped[int] = mapped_column(Integer)
    rates: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class FarmTurn(Base):
    """When a farm-wide periodic pass (``name``: the reconciler's) last ran, on any worker: every
    worker ticks, the first one due takes the turn, so the farm runs one pass per interval
    however many workers it has."""

    __tablename__ = "farm_turns"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    ran_at: Mapped[datetime] = mapped_column()


class ApiToken(Base):
    """A project's API token; only its sha256 is stored, the token is shown once."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project: Mapped[str] = mapped_column(ForeignKey("projects.name"), index=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()


class Throughput(Base):
    """Device seconds and work (cost units) recorded per batch key and device: estimates."""

    __tablename__ = "throughput"

    batch_key: Mapped[str] = mapped_column(String(255), primary_key=True)
    device: Mapped[str] = mapped_column(String(32), primary_key=True)
    jobs: Mapped[int] = mapped_column(BigInteger, default=0)
    units: Mapped[float] = mapped_column(Float, default=0.0)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Budget(Base):
    """A project's device-seconds budget, counting the jobs submitted since it was set."""

    __tablename__ = "budgets"

    project: Mapped[str] = mapped_column(ForeignKey("projects.name"), primary_key=True)
    device_seconds: Mapped[float] = mapped_column(Float)
    set_at: Mapped[datetime] = mapped_column(default=utcnow)


class ProjectWebhook(Base):
    """A project's webhook secret (HMAC-SHA256 key of every delivery's signature) and the URL
    its batches notify when they name none. The secret is kept as given: signing needs it."""

    __tablename__ = "project_webhooks"

    project: Mapped[str] = mapped_column(ForeignKey("projects.name"), primary_key=True)
    url: Mapped[str | None] = mapped_column(String(2048))
    secret: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One notification to send (a batch finished): made in the transaction that finishes
    the batch, sent by whichever worker leases it, retried with backoff."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project: Mapped[str] = mapped_column(ForeignKey("projects.name"))
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id"), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    event: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))  # pending, delivered, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column()
    lease_until: Mapped[datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column()


class WebhookAttempt(Base):
    """One HTTP attempt of a delivery: when, the receiver's status code or the error, how long."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    seconds: Mapped[float] = mapped_column(Float)
