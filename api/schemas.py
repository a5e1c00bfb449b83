"""Request and response bodies of the HTTP API (they make the OpenAPI document)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class BatchRequest(BaseModel):
    """A manifest as JSON: the same job lines the CLI takes, one object each."""

    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not ignored

    # items are checked one by one by the manifest validator, so each bad one is named
    jobs: list[Any] = Field(description="Job lines (objects), e.g. {\"kind\": \"generate\", \"seed\": 7}.")
    source: str = Field("api", max_length=255, description="Where the batch came from (a file "
                        "name, a tool).")
    name: str = Field("", max_length=128, description="The batch's name (e.g. 'sh010 lookdev').")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels to filter by, e.g. "
                                   "{\"shot\": \"010\", \"artist\": \"mia\"}.")
    webhook_url: str | None = Field(None, max_length=2048, description="POST a signed summary "
                                    "here when the batch finishes (else the project's URL).")


class LineProblem(BaseModel):
    line: int = Field(description="1-based position of the job line (or JSONL line); "
                                  "0 for the request body itself.")
    field: str = Field(description="Dotted path of the field at fault, e.g. seed or source.")
    message: str


class ValidationProblem(BaseModel):
    detail: str
    errors: list[LineProblem]


class Problem(BaseModel):
    detail: str


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="Where: e.g. [\"query\", \"label\"].")
    msg: str
    type: str


class RequestProblem(BaseModel):
    """A request the routes' own parameters refused (a 422 from query or path validation)."""

    detail: list[FieldError]


class BatchCreated(BaseModel):
    id: str = Field(description="The batch's id (as in GET /v1/batches/{id}).")
    batch_id: str = Field(description="The same id, under its older name.")
    job_count: int
    units: int
    published: bool
    reused: int = Field(0, description="Jobs that reused an identical succeeded job's outputs.")


class BatchView(BaseModel):
    id: str
    project: str
    status: str
    source: str
    jobs: int
    done: int
    progress: float = Field(description="Finished jobs plus running ones' reported share, over all jobs (0 to 1).")
    counts: dict[str, int]
    device_seconds: float
    created_at: datetime
    finished_at: datetime | None
    manifest_key: str | None
    reused: int = Field(0, description="Succeeded jobs that reused the outputs of an identical "
                        "earlier job of the project (no device time).")
    name: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    started_at: datetime | None = Field(None, description="When its first job started.")
    unserved_models: dict[str, int] | None = Field(
        None, description="Queued jobs per model that no running worker serves (they wait for "
        "one to start); given for one batch, not in listings.")


class BatchPage(BaseModel):
    items: list[BatchView]
    total: int
    limit: int
    offset: int


class OutputView(BaseModel):
    name: str
    key: str
    sha256: str
    bytes: int
    content_type: str
    url: str = Field(description="A presigned S3 URL, or this API's own download URL.")


class JobView(BaseModel):
    id: str
    batch_id: str
    index: int
    kind: str
    params: dict[str, Any]
    status: str
    attempt: int
    max_attempts: int
    error: str | None
    device_seconds: float
    reused_from: str | None = Field(None, description="The succeeded job whose outputs this one "
                                    "reused instead of running (identical kind, params, model).")
    progress: float = Field(description="Share finished, 0 to 1 (long jobs report as they go).")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    outputs: list[OutputView]


class ActionResult(BaseModel):
    batch_id: str
    changed: int


class Health(BaseModel):
    ok: bool
    checks: dict[str, str] | None = Field(
        None, description="Each check's outcome: only for the admin token (errors may name hosts).")


class JobSummary(BaseModel):
    """One job in a batch's listing: its state, not its params or outputs (GET /v1/jobs/{id})."""

    id: str
    index: int = Field(description="Position in the batch's expanded manifest, from 0.")
    kind: str
    model: str
    status: str
    attempt: int
    max_attempts: int
    error: str | None
    device_seconds: float
    reused_from: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobPage(BaseModel):
    items: list[JobSummary]
    total: int
    limit: int
    offset: int
