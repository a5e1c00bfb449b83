"""One typed settings object, read from GENFARM_* variables (and .env) by entry points only."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything genfarm needs to know about its surroundings.

    With nothing set, everything is embedded under ``data_dir``: a SQLite
    database, Celery's filesystem transport as the broker and a local folder as
    storage. Production sets the three URLs.
    """

    model_config = SettingsConfigDict(env_prefix="GENFARM_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("genfarm-data"), description="Folder for everything embedded.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default sqlite under data_dir. "
        "Production: postgresql+psycopg://user:pass@host/db"
    )
    broker_url: str | None = Field(
        None, description="Celery broker URL; default Celery's filesystem transport under data_dir. "
        "Production: redis://host:6379/0"
    )
    broker_poll_seconds: float = Field(
        0.1, gt=0, le=10, description="How often a worker looks for messages on a broker it has "
        "to poll (the embedded filesystem one; Redis and RabbitMQ deliver at once). A worker "
        "takes its next unit at its next look: lower, less idle time between units; higher, "
        "less CPU spent looking while idle.")
    storage_url: str | None = Field(
        None, description="file:///path or s3://bucket/prefix; default a folder under data_dir."
    )
    s3_endpoint_url: str | None = Field(
        None, description="Endpoint of a non-AWS S3 store; AWS_ENDPOINT_URL works too."
    )
    unit_size: int = Field(64, ge=1, le=4096, description="Job ids per Celery message.")
    max_batch: int = Field(16, ge=1, le=4096, description="Jobs per forward pass on a worker.")
    batch_wait_seconds: float = Field(
        0.05, ge=0, le=10, description="A unit with fewer jobs than its forward pass holds waits "
        "up to this long for jobs of the same kind and size from other submissions, so that lone "
        "jobs share a pass (0: never wait; a key whose best pass is 1 job never waits).")
    lease_seconds: float = Field(120.0, gt=0, description="How long a claim holds without a heartbeat.")
    max_attempts: int = Field(3, ge=1, le=100, description="Default attempts per job.")
    upload_threads: int = Field(8, ge=1, le=256, description="Encode/upload threads per worker process.")
    republish_after_seconds: float = Field(
        300.0, gt=0, description="A queued job unclaimed this long is published again."
    )
    priority_aging_seconds: float = Field(
        30.0, gt=0, description="A queued job gains one priority point per this many seconds "
        "it waits, so low priority is never starved: a job at -100 goes before a new one at 500 "
        "once it has waited 600 points' worth (5 h at 30 s).")
    reconcile_interval: float = Field(
        30.0, gt=0, description="Seconds between the farm's reconciler passes (every worker "
        "ticks this often; the first one due takes the turn).")
    pulse_seconds: float = Field(
        2.0, gt=0, le=60, description="A running unit says it is alive this often (one row "
        "update), and each worker looks this often for units that went silent.")
    pulse_grace_seconds: float = Field(
        8.0, gt=0, description="A unit silent this long lost its worker: its jobs go back to "
        "the queue at once instead of waiting out their lease.")
    progress_seconds: float = Field(
        10.0, gt=0, description="`--wait` off a terminal (piped, CI): at most one progress line "
        "this often, and only when the counts changed.")
    unit_time_limit: float = Field(
        3600.0, ge=0, description="Seconds a work unit may run (0: no limit); its jobs then retry.")
    api_max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="Largest API request body.")
    api_rate_per_minute: float = Field(600.0, gt=0, description="API requests a minute per token.")
    api_rate_burst: int = Field(60, ge=1, description="API requests a token may make at once.")
    api_public_url: str | None = Field(
        None, description="Base URL clients reach the API at (e.g. https://farm.example.com): "
        "download URLs of outputs on local storage start with it. Unset: they are paths relative "
        "to the API. Never taken from a request's Host header.")
    api_trusted_proxies: str = Field(
        "", description="Comma-separated addresses or CIDR ranges of reverse proxies whose "
        "X-Forwarded-For and X-Forwarded-Proto headers are believed (the client address for rate "
        "limits then comes from them). Empty (default): forwarded headers are ignored.")
    api_admin_token: SecretStr | None = Field(
        None, description="Bearer token of the farm's operators, or its sha256 as "
        "'sha256:HEX': it reads /metrics (figures across every project) and the detailed "
        "/healthz (each check, whose errors may name internal hosts). Unset: /metrics is refused "
        "and /healthz only says whether the farm is ok.")
    db_connect_timeout: float = Field(
        10.0, gt=0, le=300, description="Seconds to wait for a PostgreSQL connection before "
        "giving up (the API then answers 503).")
    webhook_timeout_seconds: float = Field(
        5.0, gt=0, le=60, description="Seconds a webhook attempt may take in all (connect, send, "
        "the receiver's status line); a slower receiver counts as a failed attempt.")
    webhook_max_attempts: int = Field(
        8, ge=1, le=50, description="Attempts per webhook delivery before it is marked failed.")
    webhook_backoff_seconds: float = Field(
        10.0, gt=0, description="Wait before a webhook's first retry; each next wait is three "
        "times longer (10 s, 30 s, 90 s ...), at most webhook_backoff_max_seconds.")
    webhook_backoff_max_seconds: float = Field(
        3600.0, gt=0, description="Longest wait between two attempts of a webhook delivery.")
    webhook_interval_seconds: float = Field(
        5.0, gt=0, description="How often each worker looks for webhook deliveries that are due.")
    webhook_allow_private: bool = Field(
        True, description="Webhooks may go to loopback and private-network addresses (a "
        "receiver on this machine or the studio's network). Turn it off where a project's URL "
        "must not reach the farm's own hosts (docker-compose.yml does). Link-local and "
        "metadata addresses are refused either way; see docs/webhooks.md.")
    webhook_threads: int = Field(
        4, ge=1, le=64, description="Webhook deliveries a worker sends at once (each in its own "
        "thread, so a slow receiver holds up only its own).")
    flower_sent_events: bool = Field(
        False, description="Also send Celery's task-sent event for every work unit published, "
        "so Flower lists units before a worker receives them: one more broker message per unit "
        "(a 100,000-job submission publishes 1,563 units). Off: Flower lists a unit from its "
        "task-received event on; queue lengths show the backlog either way.")
    flower_user: str = Field("admin", description="Flower basic-auth user.")
    flower_password: str | None = Field(None, description="Flower basic-auth password (required).")
    models_file: Path | None = Field(
        None, description="TOML file declaring named models (family, weights, sha256, options); "
        "the built-in aether and noop are always there.")
    model_profile: str = Field("default", description="Generator size profile (tiny, default).")
    checkpoint: str | None = Field(
        None, description="Safetensors checkpoint for the generator: a path, file:// or s3:// URL.")
    checkpoint_sha256: str | None = Field(None, description="Refuse a checkpoint with another sha256.")
    exact_cpu: bool = Field(
        True, description="On the CPU, compute in float64 so that a job's bytes never depend "
        "on the batch it ran in (BLAS kernels vary with batch size); about 4x the compute.")
    device: str | None = Field(None, description="torch device; default cuda when present, else cpu.")
    cpu_threads: int | None = Field(
        None, ge=1, le=1024, description="torch CPU threads per worker process; default: "
        "`genfarm worker` shares the cores among its processes, one each with --concurrency auto "
        "on a CPU-only machine.")

    @field_validator("models_file", "checkpoint", "checkpoint_sha256", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        """A variable set to nothing (``GENFARM_MODELS_FILE=`` in an .env or compose file)
        means unset, not the current folder."""
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _pulses_within_grace(self) -> Settings:
        """A unit pulses at least twice within its grace: one late beat does not lose it, and
        its uploads (which start only within half the grace of a pulse) do not wait on each."""
        if self.pulse_grace_seconds <= 2 * self.pulse_seconds:
            raise ValueError(
                f"GENFARM_PULSE_GRACE_SECONDS ({self.pulse_grace_seconds:g}) must be more than "
                f"twice GENFARM_PULSE_SECONDS ({self.pulse_seconds:g})")
        return self

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'genfarm.db').resolve()}"

    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://localhost//"

    def resolved_storage_url(self) -> str:
        if self.storage_url:
            return self.storage_url
        return (self.data_dir / "outputs").resolve().as_uri()

    def broker_folder(self) -> Path:
        """Where the embedded (filesystem) broker keeps its messages."""
        return (self.data_dir / "broker").resolve()

    @property
    def embedded(self) -> bool:
        return self.database_url is None and self.broker_url is None
