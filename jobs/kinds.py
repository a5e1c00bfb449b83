"""Job kinds: each kind's parameter schema, its queue, and its batch key.

A batch key names everything that must match for jobs to share one forward
pass (kind, model, output shape). No torch here: workers own the models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Models a worker can run, with the largest output side each supports.
MODELS: dict[str, int] = {
    "aether": 1024,  # the built-in 3D-aware generator
}


class Params(BaseModel):
    """Base of every kind's parameters: unknown fields are errors, not silently dropped."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class GenerateParams(Params):
    """One image from the generator: a seed, a size, a truncation and a camera."""

    seed: int = Field(ge=0, lt=2**32, description="Latent seed; same seed, same image.")
    width: int = Field(128, ge=16, le=1024, multiple_of=8, description="Output width in pixels.")
    height: int = Field(128, ge=16, le=1024, multiple_of=8, description="Output height in pixels.")
    truncation: float = Field(
        0.7, ge=0.0, le=1.0, description="Pull toward the mean latent (0 = mean, 1 = none)."
    )
    yaw: float = Field(0.0, ge=-180.0, le=180.0, description="Camera yaw in degrees.")
    pitch: float = Field(0.0, ge=-89.0, le=89.0, description="Camera pitch in degrees.")
    model: str = Field("aether", description="Generator model name.")

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in MODELS:
            raise ValueError(f"unknown model {value!r}; known: {', '.join(sorted(MODELS))}")
        return value


class NoopParams(Params):
    """A job that runs no model and writes a tiny output: for smoke tests, overhead checks and
    failure drills (a job that fails on purpose shows how the farm isolates and retries it)."""

    payload_bytes: int = Field(64, ge=1, le=1_048_576, description="Size of the output object.")
    tag: int = Field(0, ge=0, description="Free number, e.g. to sweep many distinct jobs.")
    fail: Literal["never", "always", "transient"] = Field(
        "never", description="Drill: 'always' breaks every pass it is in (a poison job); "
        "'transient' fails its first attempt with a retryable error.")
    oom_above: int = Field(0, ge=0, description="Drill: a pass of more jobs than this runs out "
                                                "of memory (0: never).")


@dataclass(frozen=True)
class Kind:
    name: str
    params: type[Params]
    queue: str
    batch_key: Callable[[dict[str, Any]], str]
    summary: str


KINDS: dict[str, Kind] = {
    k.name: k
    for k in [
        Kind(
            "generate",
            GenerateParams,
            queue="generate",
            batch_key=lambda p: f"generate:{p['model']}:{p['width']}x{p['height']}",
            summary="images from the 3D-aware generator (seed, size, truncation, camera)",
        ),
        Kind(
            "noop",
            NoopParams,
            queue="generate",
            batch_key=lambda p: "noop",
            summary="no model, a tiny output: smoke tests and overhead measurement",
        ),
    ]
}

# Fields every manifest line may carry, whatever its kind.
COMMON_FIELDS = {"kind", "priority", "max_attempts", "count"}
