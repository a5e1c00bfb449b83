"""The worker side of the built-in ``aether`` family: one generator per process, serving its
three kinds (generate, edit, video), each in its own module."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from workers.families.aether.edit import EditOps
from workers.families.aether.generate import GenerateOps
from workers.families.aether.video import VideoOps
from workers.families.aether.weights import export_checkpoint
from workers.family import JobContext, Result


class AetherFamily(GenerateOps, EditOps, VideoOps):
    """Runs aether jobs: a batch shares one kind (its batch key says so)."""

    def _run(self, batch: list[JobContext]) -> list[Result]:
        run = {"generate": self._generate, "edit": self._edit, "video": self._videos}
        return run[batch[0].kind](batch)

    def export_weights(self, path: Path, profile: str | None = None) -> str:
        """Write this model's weights (its checkpoint's, the shipped trained reference ones, or
        the seeded ones) as safetensors; returns the file's sha256."""
        return export_checkpoint(self.model, profile or self._profile(), path, self.settings)

    def train_weights(self, path: Path, profile: str | None = None, steps: int | None = None,
                      seed: int = 0, log: Callable[[str], None] = print) -> str:
        """Train reference weights on procedural scenes (``train.py``) and write them to
        ``path`` as safetensors; returns the file's sha256."""
        from workers.families.aether.train import STEPS, TrainConfig, save, train

        name = profile or self._profile()
        cfg = TrainConfig(profile=name, seed=seed, steps=steps or STEPS.get(name, 4000))
        return save(train(cfg, log), cfg, path)

    def _profile(self) -> str:
        return str(self.model.options.get("profile") or self.settings.model_profile)
