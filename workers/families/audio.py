"""The audio family's worker side: decode each job's track, analyse its structure
(``workers.audio.analyse``) and store it as ``structure.json``. Runs on the CPU; no model."""

from __future__ import annotations

import json

from jobs.families.audio import STRUCTURE
from storage.provenance import s3_metadata
from workers.audio import analyse, decode
from workers.family import Artifact, Family, JobContext, JobFailed, Result, constant


class AudioFamily(Family):
    def _run(self, batch: list[JobContext]) -> list[Result]:
        results: list[Result] = []
        for ctx in batch:
            try:
                results.append(self._analyse(ctx))
            except JobFailed as exc:  # a file that cannot be decoded fails its job alone
                results.append(exc)
        return results

    def _analyse(self, ctx: JobContext) -> list[Artifact]:
        samples, rate = decode(ctx.read_source(ctx.params["audio"]))
        structure = analyse(samples, rate, meter=int(ctx.params.get("meter", 4)))
        prov = {**self.provenance(), "kind": ctx.kind, "params": ctx.params,
                "job_id": ctx.job_id, "batch_id": ctx.batch_id}
        body = json.dumps({**structure, "provenance": prov}, sort_keys=True).encode()
        return [Artifact(STRUCTURE, "application/json", constant(body),
                         metadata=s3_metadata(prov))]
