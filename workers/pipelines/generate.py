"""The generate kind: images from the triplane generator, many seeds per forward pass."""

from __future__ import annotations

from typing import Any

import torch

from jobs import __version__
from storage.provenance import encode_png, s3_metadata
from workers.models.aether import TriplaneGenerator, reference_generator, weights_sha256
from workers.pipelines.base import Artifact, Pipeline


def load_generator(profile: str, checkpoint: str | None) -> tuple[TriplaneGenerator, bool]:
    """The generator and whether its weights are trained (from a checkpoint)."""
    model = reference_generator(profile)
    if not checkpoint:
        return model, False
    from safetensors.torch import load_file

    model.load_state_dict(load_file(checkpoint))
    return model.eval(), True


class GeneratePipeline(Pipeline):
    kind = "generate"

    def __init__(self, profile: str = "default", checkpoint: str | None = None) -> None:
        super().__init__()
        self.profile = profile
        self.checkpoint = checkpoint

    def _setup(self, device: str) -> None:
        self.model, self.trained = load_generator(self.profile, self.checkpoint)
        self.model.to(device)
        self.weights = weights_sha256(self.model)

    def provenance(self) -> dict[str, Any]:
        return {
            "model": "aether", "profile": self.profile, "weights_sha256": self.weights,
            "weights": "checkpoint" if self.trained else "reference (untrained)",
            "genfarm": __version__,
        }

    @torch.no_grad()
    def _run(self, jobs: list[dict[str, Any]], context: list[dict[str, Any]]) -> list[list[Artifact]]:
        width, height = jobs[0]["width"], jobs[0]["height"]  # one batch key: one shape
        dev = self.device
        z = self.model.latents([p["seed"] for p in jobs]).to(dev)
        trunc = torch.tensor([p["truncation"] for p in jobs], device=dev)
        yaw = torch.tensor([p["yaw"] for p in jobs], device=dev)
        pitch = torch.tensor([p["pitch"] for p in jobs], device=dev)
        with torch.autocast("cuda", enabled=dev.startswith("cuda")):
            images = self.model(z, trunc, yaw, pitch, (height, width))
        pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        pixels = pixels.permute(0, 2, 3, 1).contiguous().cpu()
        base = self.provenance()
        results = []
        for i, params in enumerate(jobs):
            prov = {**base, "kind": "generate", "params": params, "seed": params["seed"],
                    "job_id": context[i]["job_id"], "batch_id": context[i]["batch_id"]}
            raw = pixels[i].numpy().tobytes()
            results.append([Artifact(
                "image.png", "image/png",
                lambda raw=raw, prov=prov: encode_png(raw, width, height, prov),
                metadata=s3_metadata(prov))])
        return results
