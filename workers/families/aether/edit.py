"""The edit kind: latent edits, style mixing and camera re-renders of generated objects, and
image operations on any image, run as batched tensor ops (kornia) on the device."""

from __future__ import annotations

import io
import math
from typing import Any

import kornia
import numpy as np
import torch
from PIL import Image

from jobs.errors import PipelineError
from workers.families.aether.generate import AetherBase
from workers.family import JobContext, PermanentError, Result
from workers.limits import reraise_time_limit

# ops whose parameters decide the output shape: jobs batch together only where these match
SHAPE_OPS = ("resize", "crop", "flip", "rotate")


class EditOps(AetherBase):
    @torch.no_grad()
    def _edit(self, batch: list[JobContext]) -> list[Result]:
        jobs = [c.params for c in batch]
        op = jobs[0]["op"]  # one batch key: one op
        pixels = self._image_ops(jobs, batch) if op == "image" else self._latent_ops(op, jobs)
        base = self.provenance()
        return [[self.png(pixels[i], {**base, "kind": ctx.kind, "op": op, "params": ctx.params,
                                      "job_id": ctx.job_id, "batch_id": ctx.batch_id})]
                for i, ctx in enumerate(batch)]

    # -- edits in the generator's latent space -------------------------------------------
    def _latent_ops(self, op: str, jobs: list[dict[str, Any]]) -> list[torch.Tensor]:
        sources = [self._source_params(j) for j in jobs]
        w = self.w(sources)
        ws = self.net.broadcast(w).clone()
        cameras = sources
        if op == "latent":
            dirs = self.net.directions[torch.tensor([j["direction"] for j in jobs])]
            strength = torch.tensor([float(j["strength"]) for j in jobs], device=w.device,
                                    dtype=w.dtype)
            ws = self.net.broadcast(w + strength[:, None] * dirs)
        elif op == "style_mix":
            mix = self.w([{"seed": j["mix_seed"], "truncation": s.get("truncation", 0.7)}
                          for j, s in zip(jobs, sources, strict=True)])
            cut = self.net.synthesis.num_layers // 2
            for i, j in enumerate(jobs):
                layers = slice(0, cut) if j["layers"] == "coarse" else slice(cut, None)
                ws[i, layers] = mix[i]
        elif op == "rerender":
            cameras = jobs
        size = (jobs[0]["height"], jobs[0]["width"])
        return list(self.images(sources, ws=ws, cameras=cameras, size=size))

    @staticmethod
    def _source_params(job: dict[str, Any]) -> dict[str, Any]:
        params = job["source"].get("params")
        if not params or "seed" not in params:
            raise PipelineError("a latent edit needs a generated source (a generate job)")
        return params

    # -- image operations ------------------------------------------------------------------
    def _image_ops(self, jobs: list[dict[str, Any]], context: list[JobContext]) -> list[torch.Tensor]:
        images = [self._load(j["source"], ctx) for j, ctx in zip(jobs, context, strict=True)]
        out: list[torch.Tensor | None] = [None] * len(jobs)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, (job, image) in enumerate(zip(jobs, images, strict=True)):
            shape = tuple((name, str(v)) for op in job["ops"] for name, v in op.items()
                          if v is not None and name in SHAPE_OPS)
            groups.setdefault((tuple(image.shape), shape), []).append(i)
        for members in groups.values():
            x = torch.stack([images[i] for i in members]).to(self.device, self.dtype)
            for step in range(len(jobs[members[0]]["ops"])):
                ops = [jobs[i]["ops"][step] for i in members]
                x = self._apply(x, ops, [context[i] for i in members])
            pixels = (x.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
            for k, i in enumerate(members):
                out[i] = pixels[k].contiguous()
        return [p for p in out if p is not None]

    def _apply(self, x: torch.Tensor, ops: list[dict[str, Any]], ctx: list[JobContext]) -> torch.Tensor:
        name = next(k for k, v in ops[0].items() if v is not None)
        vals = [op[name] for op in ops]
        def per() -> torch.Tensor:
            return torch.tensor([float(v) for v in vals], device=x.device, dtype=x.dtype)
        if name == "resize":
            w, h = vals[0]
            return kornia.geometry.transform.resize(x, (h, w), antialias=True)
        if name == "crop":
            left, top, w, h = vals[0]
            if top + h > x.shape[2] or left + w > x.shape[3]:
                raise PipelineError(f"crop {vals[0]} falls outside the {x.shape[3]}x{x.shape[2]} image")
            return x[:, :, top : top + h, left : left + w]
        if name == "flip":
            return torch.flip(x, dims=[3] if vals[0] == "horizontal" else [2])
        if name == "rotate":
            return kornia.geometry.transform.rotate(x, per())
        if name == "brightness":
            return kornia.enhance.adjust_brightness(x, per())
        if name == "contrast":
            return kornia.enhance.adjust_contrast(x, per())
        if name == "saturation":
            return kornia.enhance.adjust_saturation(x, per())
        if name == "hue":
            return kornia.enhance.adjust_hue(x, per() * 2 * math.pi)
        if name == "gamma":
            return kornia.enhance.adjust_gamma(x, per())
        if name == "blur":
            sigma = per()
            size = int(2 * math.ceil(3 * float(sigma.max())) + 1)
            return kornia.filters.gaussian_blur2d(x, (size, size), torch.stack([sigma, sigma], 1))
        if name == "sharpen":
            return kornia.enhance.sharpness(x, per())
        if name == "color_transfer":
            refs = torch.stack([self._load(v, c) for v, c in zip(vals, ctx, strict=True)])
            refs = refs.to(x.device, x.dtype)
            return color_transfer(x, refs)
        raise PipelineError(f"unknown image op {name!r}")

    def _load(self, source: dict[str, Any], ctx: JobContext) -> torch.Tensor:
        """A source image as float (3, H, W) in [0, 1]: a stored object, or regenerated from the
        generate params it came from (deterministic: the same pixels as that job's output)."""
        if source.get("key"):
            data = ctx.read_source(source)
            try:
                with Image.open(io.BytesIO(data)) as im:
                    arr = np.asarray(im.convert("RGB"))
            except Exception as exc:  # noqa: BLE001 - a corrupt source is the job's permanent error
                reraise_time_limit(exc)  # (the unit's time limit is no fault of the source's)
                raise PermanentError(f"source {source['key']} is not a readable image: {exc}") from exc
            return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255
        params = source.get("params")
        if not params:
            raise PipelineError("the edit's source has neither a key nor generate params")
        return self.images([params])[0].permute(2, 0, 1).float() / 255


def color_transfer(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Reinhard colour transfer: match each Lab channel's mean and spread to the reference's."""
    lab = kornia.color.rgb_to_lab(x.clamp(0, 1))
    ref_lab = kornia.color.rgb_to_lab(ref.clamp(0, 1))
    mu, sd = lab.mean(dim=(2, 3), keepdim=True), lab.std(dim=(2, 3), keepdim=True) + 1e-5
    rmu, rsd = ref_lab.mean(dim=(2, 3), keepdim=True), ref_lab.std(dim=(2, 3), keepdim=True)
    return kornia.color.lab_to_rgb((lab - mu) / sd * rsd + rmu).clamp(0, 1)
