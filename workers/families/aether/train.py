"""Training the reference weights: the generator learns to reproduce the analytic render of the
procedural scene of its latent (``scenes.scene_of``), from random cameras, with direct (MSE)
supervision. One seed and one config give one checkpoint.

Truncation keeps a meaning (a truncated latent renders the scene of the pulled-in latent) and so
does style mixing (coarse styles carry shape, size, pose; fine styles colour and material).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from workers.families.aether.network import Camera, TriplaneGenerator, reference_generator
from workers.families.aether.scenes import Scene, random_cameras, render_sdf, scene_of

DESCRIPTION = "genfarm reference, trained on procedural scenes"


@dataclass(frozen=True)
class TrainConfig:
    profile: str = "default"
    steps: int = 4000
    seed: int = 0
    batch: int = 8
    size: int = 32  # side of the training images (their targets are cheap)
    final_size: int = 64  # ... and for the last ``final`` share of the steps, closer to jobs'
    final: float = 0.2
    lr: float = 3e-3
    mix: float = 0.25  # share of each batch trained with style mixing
    march_steps: int = 28


STEPS = {"tiny": 1500, "default": 4500}  # each fits a shared 2-core machine at one thread


def mixed(coarse: Scene, fine: Scene) -> Scene:
    """Shape, size, pose and the satellite's place from ``coarse``; colours and material from
    ``fine``: what style mixing at the middle layer means."""
    return replace(coarse, color=fine.color, specular=fine.specular, moon_color=fine.moon_color)


def cat(scenes: list[Scene]) -> Scene:
    fields = Scene.__dataclass_fields__
    return Scene(**{f: torch.cat([getattr(s, f) for s in scenes]) for f in fields})


def batch(model: TriplaneGenerator, cfg: TrainConfig, gen: torch.Generator
          ) -> tuple[torch.Tensor, Camera, torch.Tensor, Scene]:
    """Per-layer styles' inputs for one training batch: latents, cameras, truncations, and the
    scenes they should show. The last ``mix`` share of rows are style-mixed."""
    n = cfg.batch
    z = torch.randn(n, model.p.z_dim, generator=gen)
    z2 = torch.randn(n, model.p.z_dim, generator=gen)
    trunc = (0.35 + 0.65 * torch.rand(n, generator=gen)).clamp(max=1.0)
    trunc = torch.where(torch.rand(n, generator=gen) < 0.3, torch.ones(n), trunc)
    cam = random_cameras(n, gen)
    k = n - int(round(n * cfg.mix))
    target = cat([scene_of(z[:k], trunc[:k]),
                  mixed(scene_of(z[k:], trunc[k:]), scene_of(z2[k:], trunc[k:]))])
    return torch.stack([z, z2], 1), cam, trunc, target


def styles(model: TriplaneGenerator, zz: torch.Tensor, trunc: torch.Tensor, mix_from: int
           ) -> torch.Tensor:
    """(B, layers, w_dim): rows from ``mix_from`` on take their fine layers from the second z."""
    w = model.mapping(zz[:, 0], trunc)
    w2 = model.mapping(zz[:, 1], trunc)
    ws = model.broadcast(w).clone()
    cut = model.synthesis.num_layers // 2
    ws[mix_from:, cut:] = w2[mix_from:, None, :]
    return ws


def cosine_lr(base: float, step: int, steps: int) -> float:
    """The learning rate at ``step`` of ``steps``: a cosine from ``base`` down to 5% of it."""
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps)))


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """dB of images in [-1, 1], measured in [0, 1], rounded to 0.01."""
    mse = float(F.mse_loss(pred, target)) / 4
    return round(10 * math.log10(1 / mse), 2)


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> TriplaneGenerator:
    """Train from the seeded reference weights; returns the model in eval mode."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = reference_generator(cfg.profile).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99))
    start = time.perf_counter()
    running = 0.0
    k = cfg.batch - int(round(cfg.batch * cfg.mix))
    for step in range(cfg.steps):
        lr = cosine_lr(cfg.lr, step, cfg.steps)
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50)  # a short warm-up
        if step % 20 == 0:
            model.estimate_w_stats(512)  # truncation's mean w follows the mapping as it learns
        size = cfg.size if step < cfg.steps * (1 - cfg.final) else cfg.final_size
        zz, cam, trunc, scene = batch(model, cfg, gen)
        with torch.no_grad():
            target = render_sdf(scene, cam, size, steps=cfg.march_steps)
        pred = model.synthesize(styles(model, zz, trunc, k), cam, (size, size))
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        value = float(loss.detach())
        running = 0.98 * running + 0.02 * value if step else value
        if step % 50 == 0 or step == cfg.steps - 1:
            psnr = 10 * math.log10(4.0 / max(running, 1e-10))
            log(f"step {step:5d}  loss {running:.5f}  psnr~{psnr:.2f} dB  lr {lr:.2e}  "
                f"{time.perf_counter() - start:.0f}s")
    model.estimate_w_stats()
    return model.eval()


def save(model: TriplaneGenerator, cfg: TrainConfig, path: Path) -> str:
    """Write the trained weights as safetensors (the config in its metadata); returns sha256."""
    from workers.families.aether.weights import save_checkpoint

    state = {k: v.detach().cpu().float().contiguous() for k, v in model.state_dict().items()}
    return save_checkpoint(state, path, {"model": "aether", "profile": cfg.profile,
                                         "description": DESCRIPTION,
                                         "config": json.dumps(asdict(cfg), sort_keys=True)})


@torch.no_grad()
def evaluate(model: TriplaneGenerator, seeds: list[int], size: int = 128, truncation: float = 0.7,
             turn: float = 40.0, camera_seed: int = 1_000_003) -> dict[str, float]:
    """PSNR (dB, images in [0, 1]) of the generator's images of held-out ``seeds`` (the jobs'
    latents) from held-out cameras against the analytic renders of their scenes, and the same
    with each camera turned ``turn`` degrees in yaw (3D consistency)."""
    gen = torch.Generator().manual_seed(camera_seed)
    cam = random_cameras(len(seeds), gen)
    cam = Camera(cam.yaw, cam.pitch.clamp(-20, 35), cam.radius, cam.fov)
    z = model.latents(seeds)
    trunc = torch.full((len(seeds),), truncation)
    ws = model.broadcast(model.mapping(z, trunc))
    scene = scene_of(z, trunc)
    out = {}
    for name, c in (("psnr", cam), ("psnr_turned", replace(cam, yaw=cam.yaw + turn))):
        pred = model.synthesize(ws, c, (size, size)).clamp(-1, 1)
        out[name] = psnr(pred, render_sdf(scene, c, size, steps=48))
    return out
