"""cppn: an example genfarm model family in one module.

A compositional pattern-producing network: a small MLP, its weights drawn from the job's seed,
maps each pixel's (x, y, radius) to a colour. Every job of a pass is one forward pass on the
device; the same seed gives the same image. The two halves a family needs:

- ``SPEC``, torch-free, found through the ``genfarm.models`` entry point: the kinds this family
  serves with each one's parameters (pydantic), its options in the models file, and where its
  worker side lives. The CLI and the API validate manifests with it.
- ``CppnFamily``, the worker side: ``_setup`` once per worker process on its device, ``_run``
  a batch of jobs, exactly one result per job.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from jobs.registry import FamilySpec, Params
from storage.provenance import encode_png, s3_metadata
from workers.family import Artifact, Family, JobContext, Result


class Generate(Params):
    """A seeded pattern: the seed picks the network's weights, zoom how much of it is seen."""

    model: str = Field(description="A cppn model of the models file.")
    seed: int = Field(ge=0, lt=2**31, description="Picks the network; same seed, same image.")
    width: int = Field(128, ge=16, le=1024, multiple_of=8, description="Output width.")
    height: int = Field(128, ge=16, le=1024, multiple_of=8, description="Output height.")
    zoom: float = Field(1.0, gt=0.0, le=16.0, description="How far out the pattern is seen.")


class Options(BaseModel):
    """The family's options in the models file."""

    hidden: int = Field(32, ge=4, le=256, description="Units per hidden layer.")
    depth: int = Field(4, ge=1, le=12, description="Hidden layers.")


SPEC = FamilySpec(
    name="cppn",
    summary="seeded pattern-producing networks (an example plugin)",
    kinds={"generate": Generate},
    worker="genfarm_cppn:CppnFamily",
    weights="none",
    options=Options,
    requires=("torch",),
)


class CppnFamily(Family):
    def _setup(self, device: str, dtype: Any) -> None:
        import torch

        self.torch = torch
        self.options = Options.model_validate(dict(self.model.options))
        self.dtype = torch.float32  # patterns need no float64 to be batch-invariant here

    def provenance(self) -> dict[str, Any]:
        return {**super().provenance(), "options": self.options.model_dump(),
                "weights": "drawn from each job's seed"}

    def _run(self, batch: list[JobContext]) -> list[Result]:
        torch = self.torch
        o = self.options
        first = batch[0].params
        h, w = first["height"], first["width"]  # one batch key: one size
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        grid = torch.stack([xs, ys, (xs**2 + ys**2).sqrt()], -1).reshape(1, h * w, 3)
        zoom = torch.tensor([c.params["zoom"] for c in batch]).reshape(-1, 1, 1)
        x = (grid * zoom).to(self.device, self.dtype)  # (B, HW, 3)
        widths = [3] + [o.hidden] * o.depth + [3]
        layers = [self._weights(c.params["seed"], widths) for c in batch]
        with torch.no_grad():
            for i in range(len(widths) - 1):
                wts = torch.stack([lay[i] for lay in layers]).to(self.device, self.dtype)
                x = torch.bmm(x, wts)
                x = torch.tanh(x) if i < len(widths) - 2 else torch.sigmoid(x * 2)
        pixels = (x * 255).round().to(torch.uint8).reshape(len(batch), h, w, 3).cpu()
        base = self.provenance()
        results: list[Result] = []
        for i, ctx in enumerate(batch):
            prov = {**base, "kind": ctx.kind, "params": ctx.params, "job_id": ctx.job_id}
            raw = pixels[i].numpy().tobytes()
            results.append([Artifact("image.png", "image/png",
                                     lambda raw=raw, prov=prov: encode_png(raw, w, h, prov),
                                     metadata=s3_metadata(prov))])
        return results

    def _weights(self, seed: int, widths: list[int]) -> list[Any]:
        torch = self.torch
        gen = torch.Generator().manual_seed(seed)
        return [torch.randn(a, b, generator=gen) * (2.0 / a) ** 0.5 * 1.6
                for a, b in zip(widths, widths[1:], strict=False)]
