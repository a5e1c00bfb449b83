"""The trained reference weights shipped in the package, the procedural scenes they learned, and
the training loop that makes them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from jobs.registry import ModelEntry
from jobs.settings import Settings
from workers.families.aether.network import (
    Camera,
    TriplaneGenerator,
    reference_generator,
    weights_sha256,
)
from workers.families.aether.scenes import BACKGROUND, SHAPES, render_sdf, scene_of
from workers.families.aether.train import TrainConfig, batch, save, styles, train
from workers.families.aether.weights import REFERENCE_DIR, TRAINED, load_model, shipped_checkpoint


@pytest.mark.parametrize("profile", ["tiny", "default"])
def test_shipped_checkpoint_matches_its_digest_and_loads_by_default(profile: str) -> None:
    shipped = shipped_checkpoint(profile)
    assert shipped is not None, f"no reference checkpoint for {profile} in {REFERENCE_DIR}"
    path, recorded = shipped
    assert hashlib.sha256(path.read_bytes()).hexdigest() == recorded
    loaded = load_model(ModelEntry("aether", "aether"), Settings(model_profile=profile), "cpu")
    assert loaded.weights == f"{TRAINED} ({path.name} sha256:{recorded})"
    seeded = load_model(ModelEntry("aether", "aether", "seeded"), Settings(model_profile=profile),
                        "cpu")
    assert seeded.weights == "seeded reference (untrained)"
    assert seeded.weights_sha256 == weights_sha256(reference_generator(profile))
    assert loaded.weights_sha256 != seeded.weights_sha256


def sphere_scene(n: int) -> torch.Tensor:
    """Latents whose scene is (almost only) a sphere: a large first component."""
    z = torch.zeros(n, 32)
    z[:, 0] = 4.0
    z[:, 9] = 1.0
    return z


def test_a_sphere_looks_the_same_from_every_side_and_shrinks_with_distance() -> None:
    z = sphere_scene(3)
    scene = scene_of(z)
    assert float(scene.shape[0, SHAPES.index("sphere")]) > 0.95
    cams = Camera(yaw=torch.tensor([0.0, 120.0, 0.0]), pitch=torch.tensor([0.0, 40.0, 0.0]),
                  radius=torch.tensor([2.7, 2.7, 4.0]), fov=torch.tensor([30.0, 30.0, 30.0]))
    images = render_sdf(scene, cams, 64)
    area = ((images - BACKGROUND).abs().sum(1) > 0.05).float().mean(dim=(1, 2))
    # the analytic silhouette: a sphere of radius r at distance d covers asin(r/d) of the view
    r = float(scene.size[0])
    expected = torch.pi * (torch.tan(torch.asin(torch.tensor(r / 2.7)))
                           / torch.tan(torch.deg2rad(torch.tensor(15.0))) / 2) ** 2
    assert abs(float(area[0]) - float(expected)) < 0.02, (area, expected)
    assert abs(float(area[0]) - float(area[1])) < 0.01  # another side, the same disc
    assert float(area[2]) < 0.6 * float(area[0])  # further away, smaller


def test_a_few_training_steps_reduce_the_loss() -> None:
    cfg = TrainConfig(profile="tiny", steps=30, batch=4, size=32, march_steps=16, seed=3)
    model = train(cfg, log=lambda line: None)
    fresh = reference_generator("tiny")

    def loss(m: TriplaneGenerator) -> float:  # on the same unseen batch for both
        zz, cam, trunc, scene = batch(m, cfg, torch.Generator().manual_seed(99))
        with torch.no_grad():
            target = render_sdf(scene, cam, cfg.size, steps=cfg.march_steps)
            pred = m.synthesize(styles(m, zz, trunc, cfg.batch), cam, (cfg.size, cfg.size))
        return float(torch.nn.functional.mse_loss(pred, target))

    assert loss(model) < 0.8 * loss(fresh)


def test_training_is_reproducible(tmp_path: Path) -> None:
    cfg = TrainConfig(profile="tiny", steps=3, batch=2, size=16, march_steps=8, seed=5)
    a, b = train(cfg, log=lambda line: None), train(cfg, log=lambda line: None)
    assert weights_sha256(a) == weights_sha256(b)
    # the files too: safetensors alone writes its metadata in a different order each run
    assert save(a, cfg, tmp_path / "a.safetensors") == save(b, cfg, tmp_path / "b.safetensors")
