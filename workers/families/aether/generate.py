"""The aether family's model helpers and its generate kind: images from the triplane generator,
many seeds per forward pass."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch

from storage.provenance import encode_png, s3_metadata
from workers.families.aether.network import Camera
from workers.families.aether.weights import LoadedModel, load_model, to_uint8
from workers.family import Artifact, Family, JobContext, Result, constant


class AetherBase(Family):
    """The generator (one copy per process) and what every aether kind does with it."""

    def _setup(self, device: str, dtype: Any) -> None:
        self.loaded: LoadedModel = load_model(self.model, self.settings, device, dtype)
        self.model_module = self.loaded.module
        self.dtype = self.loaded.dtype
        cuda = torch.device(device).type == "cuda"
        self.half = cuda_autocast(str(self.model.options.get("autocast", "auto"))) \
            if cuda else None
        if cuda:  # the super-resolution convolutions run at the output size
            self.model_module.superres.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.synthesize = self.model_module.synthesize
        if self.model.options.get("compile"):
            self.synthesize = torch.compile(self.synthesize, dynamic=False)

    @property
    def net(self) -> Any:
        return self.model_module

    def provenance(self) -> dict[str, Any]:
        return {**self.loaded.provenance(), "family": self.model.family}

    def autocast(self) -> Any:
        """Mixed precision on CUDA (the model's ``autocast`` option); none elsewhere."""
        return torch.autocast("cuda", dtype=self.half or torch.float16,
                              enabled=self.half is not None)

    def images(self, sources: list[dict[str, Any]], ws: torch.Tensor | None = None,
               cameras: list[dict[str, Any]] | None = None,
               size: tuple[int, int] | None = None) -> torch.Tensor:
        """uint8 (B, H, W, 3) images of generate params ``sources`` (their seed, truncation,
        camera, size), optionally with other per-layer styles, cameras or size."""
        dev = self.device
        if ws is None:
            ws = self.net.broadcast(self.w(sources))
        cam = Camera.of(cameras or sources, dev, self.dtype)
        h, w = size or (sources[0]["height"], sources[0]["width"])
        with self.autocast():
            return to_uint8(self.synthesize(ws, cam, (h, w)))

    def w(self, sources: list[dict[str, Any]]) -> torch.Tensor:
        trunc = torch.tensor([float(p.get("truncation", 0.7)) for p in sources],
                             device=self.device, dtype=self.dtype)
        out: torch.Tensor = self.net.w_of([int(p["seed"]) for p in sources], trunc)
        return out

    def png(self, pixels: torch.Tensor, prov: dict[str, Any], name: str = "image.png") -> Artifact:
        raw = pixels.numpy().tobytes()
        h, w = pixels.shape[0], pixels.shape[1]
        return Artifact(name, "image/png", lambda: encode_png(raw, w, h, prov),
                        metadata=s3_metadata(prov))


def cuda_autocast(option: str) -> torch.dtype | None:
    """The dtype of the ``autocast`` option on this process's GPU, or None for off."""
    if option == "off":
        return None
    if option == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    dtype: torch.dtype = getattr(torch, option)
    return dtype


class GenerateOps(AetherBase):
    @torch.no_grad()
    def _generate(self, batch: list[JobContext]) -> list[Result]:
        jobs = [c.params for c in batch]
        w = self.w(jobs)
        pixels = self.images(jobs, ws=self.net.broadcast(w))
        base = self.provenance()
        results: list[Result] = []
        for i, ctx in enumerate(batch):
            params = ctx.params
            prov = {**base, "kind": ctx.kind, "params": params, "seed": params["seed"],
                    "job_id": ctx.job_id, "batch_id": ctx.batch_id}
            arts = [self.png(pixels[i], prov)]
            if params.get("save_latent"):
                buf = io.BytesIO()
                np.save(buf, w[i].float().cpu().numpy())
                arts.append(Artifact("latent.npy", "application/x-npy", constant(buf.getvalue())))
            results.append(arts)
        return results
