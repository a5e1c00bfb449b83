"""The ``noop`` family: no model, a tiny deterministic output. Measures the farm's own
overhead and runs failure drills (poison jobs, transient errors, out of memory)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from jobs.registry import FamilySpec, Params


class Noop(Params):
    """A job that runs no model and writes a tiny output: for smoke tests, overhead checks and
    failure drills (a job that fails on purpose shows how the farm isolates and retries it)."""

    model: str = Field(description="The model (see `genfarm models`).")
    payload_bytes: int = Field(64, ge=1, le=1_048_576, description="Size of the output object.")
    tag: int = Field(0, ge=0, lt=2**63, description="Free number, e.g. to sweep many distinct jobs.")
    fail: Literal["never", "always", "transient"] = Field(
        "never", description="Drill: 'always' breaks every pass it is in (a poison job); "
        "'transient' fails its first attempt with a retryable error.")
    oom_above: int = Field(0, ge=0, le=1_000_000, description="Drill: a pass of more jobs than "
                           "this runs out of memory (0: never).")


def batch_key(kind: str, params: Any) -> str:
    return f"noop:{params['model']}"


SPEC = FamilySpec(
    name="noop",
    summary="no model, a tiny output: smoke tests, overhead measurement and failure drills",
    kinds={"noop": Noop},
    worker="workers.families.noop:NoopFamily",
    weights="none",
    unit_seconds=0.0005,  # benchmarks/overhead.py: the farm's own cost of a job dominates
    batch_key=batch_key,
    uses_device=False,
)
