"""The noop family: no model, a tiny deterministic output. Measures the farm's own overhead, and
runs failure drills (poison jobs, transient errors, out of memory) without a GPU."""

from __future__ import annotations

import hashlib

from workers.family import Artifact, Family, JobContext, Result, Retry, constant


class NoopFamily(Family):
    def _run(self, batch: list[JobContext]) -> list[Result]:
        limits = [c.params["oom_above"] for c in batch if c.params.get("oom_above")]
        if limits and len(batch) > min(limits):
            raise MemoryError(f"out of memory: a pass of {len(batch)} jobs (drill: fits {min(limits)})")
        for ctx in batch:
            if ctx.params.get("fail") == "always":  # one bad input breaks the whole pass
                raise ValueError(f"job {ctx.job_id}: drill: this job always fails")
        results: list[Result] = []
        for ctx in batch:
            if ctx.params.get("fail") == "transient" and ctx.attempt <= 1:
                results.append(Retry(f"job {ctx.job_id}: drill: a transient failure"))
                continue
            seed = hashlib.sha256(f"{ctx.job_id}:{ctx.params['tag']}".encode()).digest()
            size = ctx.params["payload_bytes"]
            body = (seed * (size // len(seed) + 1))[:size]
            results.append([Artifact("payload.bin", "application/octet-stream", constant(body))])
        return results
