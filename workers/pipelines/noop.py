"""The noop kind: no model, a tiny deterministic output. Measures the farm's own overhead."""

from __future__ import annotations

import hashlib
from typing import Any

from workers.pipelines.base import Artifact, Pipeline


class NoopPipeline(Pipeline):
    kind = "noop"

    def _run(self, jobs: list[dict[str, Any]], context: list[dict[str, Any]]) -> list[list[Artifact]]:
        results = []
        for params, ctx in zip(jobs, context, strict=True):
            seed = hashlib.sha256(f"{ctx['job_id']}:{params['tag']}".encode()).digest()
            size = params["payload_bytes"]
            body = (seed * (size // len(seed) + 1))[:size]
            results.append([Artifact("payload.bin", "application/octet-stream", lambda b=body: b)])
        return results
