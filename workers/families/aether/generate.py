"""The generate kind: images from the triplane generator, many seeds per forward pass."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch

from jobs.settings import Settings
from storage.provenance import encode_png, s3_metadata
from workers.models.aether import Camera
from workers.models.registry import LoadedModel, load_model, to_uint8
from workers.pipelines.base import Artifact, Pipeline, constant


class ModelPipeline(Pipeline):
    """A pipeline around the registry's generator (one copy per process)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings

    def _setup(self, device: str) -> None:
        self.loaded: LoadedModel = load_model("aether", self.settings, device)
        self.model = self.loaded.module
        self.dtype = self.loaded.dtype

    def provenance(self) -> dict[str, Any]:
        return self.loaded.provenance()

    def autocast(self) -> Any:
        return torch.autocast("cuda", enabled=self.device.startswith("cuda"))

    def images(self, sources: list[dict[str, Any]], ws: torch.Tensor | None = None,
               cameras: list[dict[str, Any]] | None = None,
               size: tuple[int, int] | None = None) -> torch.Tensor:
        """uint8 (B, H, W, 3) images of generate params ``sources`` (their seed, truncation,
        camera, size), optionally with other per-layer styles, cameras or size."""
        dev = self.device
        if ws is None:
            ws = self.model.broadcast(self.w(sources))
        cam = Camera.of(cameras or sources, dev, self.dtype)
        h, w = size or (sources[0]["height"], sources[0]["width"])
        with self.autocast():
            return to_uint8(self.model.synthesize(ws, cam, (h, w)))

    def w(self, sources: list[dict[str, Any]]) -> torch.Tensor:
        trunc = torch.tensor([float(p.get("truncation", 0.7)) for p in sources],
                             device=self.device, dtype=self.dtype)
        return self.model.w_of([int(p["seed"]) for p in sources], trunc)

    def png(self, pixels: torch.Tensor, prov: dict[str, Any], name: str = "image.png") -> Artifact:
        raw = pixels.numpy().tobytes()
        h, w = pixels.shape[0], pixels.shape[1]
        return Artifact(name, "image/png", lambda: encode_png(raw, w, h, prov),
                        metadata=s3_metadata(prov))


class GeneratePipeline(ModelPipeline):
    kind = "generate"

    @torch.no_grad()
    def _run(self, jobs: list[dict[str, Any]], context: list[dict[str, Any]]) -> list[list[Artifact]]:
        w = self.w(jobs)
        pixels = self.images(jobs, ws=self.model.broadcast(w))
        base = self.provenance()
        results = []
        for i, params in enumerate(jobs):
            prov = {**base, "kind": "generate", "params": params, "seed": params["seed"],
                    "job_id": context[i]["job_id"], "batch_id": context[i]["batch_id"]}
            arts = [self.png(pixels[i], prov)]
            if params.get("save_latent"):
                buf = io.BytesIO()
                np.save(buf, w[i].float().cpu().numpy())
                arts.append(Artifact("latent.npy", "application/x-npy", constant(buf.getvalue())))
            results.append(arts)
        return results
