"""The noop kind: no model, a tiny deterministic output. Measures the farm's own overhead, and
runs failure drills (poison jobs, transient errors, out of memory) without a GPU."""

from __future__ import annotations

import hashlib
from typing import Any

from workers.pipelines.base import Artifact, Pipeline, constant


class NoopPipeline(Pipeline):
    kind = "noop"

    def _run(self, jobs: list[dict[str, Any]], context: list[dict[str, Any]]) -> list[list[Artifact]]:
        limits = [p["oom_above"] for p in jobs if p.get("oom_above")]
        if limits and len(jobs) > min(limits):
            raise MemoryError(f"out of memory: a pass of {len(jobs)} jobs (drill: fits {min(limits)})")
        for params, ctx in zip(jobs, context, strict=True):
            if params.get("fail") == "always":  # one bad input breaks the whole pass
                raise ValueError(f"job {ctx['job_id']}: drill: this job always fails")
            if params.get("fail") == "transient" and ctx.get("attempt", 1) <= 1:
                raise ConnectionError(f"job {ctx['job_id']}: drill: a transient failure")
        results = []
        for params, ctx in zip(jobs, context, strict=True):
            seed = hashlib.sha256(f"{ctx['job_id']}:{params['tag']}".encode()).digest()
            size = params["payload_bytes"]
            body = (seed * (size // len(seed) + 1))[:size]
            results.append([Artifact("payload.bin", "application/octet-stream", constant(body))])
        return results
