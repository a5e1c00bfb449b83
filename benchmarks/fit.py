"""How well the built-in generator can fit a few fixed procedural scenes: a probe of what bounds
the reference weights (``genfarm model train``), far cheaper than a training run.

    python benchmarks/fit.py [--scenes 16] [--steps 1200] [--profile default]

From the seeded weights, the generator learns ``--scenes`` fixed latents' scenes
(``scenes.scene_of``) from random cameras, as training does (MSE against the analytic render,
Adam with a cosine schedule, batches of 8 at 64x64); then PSNR at 64 and 128 on held-out cameras
of the same scenes. One scene fits well when the renderer is not the bound (on 2 CPU cores,
default profile: 27.1 dB at 128 after 300 steps, in 64 s); many scenes fitting poorly points at the map
from latent to scene. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from workers.families.aether.network import reference_generator  # noqa: E402
from workers.families.aether.scenes import random_cameras, render_sdf, scene_of  # noqa: E402
from workers.families.aether.train import cosine_lr, psnr  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=16)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--profile", default="default")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=123, help="of the scenes' latents")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = reference_generator(args.profile).train()
    z_all = torch.randn(args.scenes, model.p.z_dim,
                        generator=torch.Generator().manual_seed(args.seed))
    gen = torch.Generator().manual_seed(5)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.99))
    ones = torch.ones(8)
    start = time.perf_counter()
    running = 0.0
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(args.lr, step, args.steps)
        cam = random_cameras(8, gen)
        z = z_all[torch.randint(0, args.scenes, (8,), generator=gen)]
        with torch.no_grad():
            target = render_sdf(scene_of(z, ones), cam, 64, steps=28)
        pred = model.synthesize(model.broadcast(model.mapping(z, ones)), cam, (64, 64))
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running = 0.98 * running + 0.02 * float(loss.detach()) if step else float(loss.detach())
        if step % 100 == 0:
            print(f"step {step}: psnr~{10 * math.log10(4 / running):.2f} dB", file=sys.stderr)
    model.eval()
    held_out: dict[str, float] = {}
    with torch.no_grad():
        cam = random_cameras(8, torch.Generator().manual_seed(99))
        z = z_all[torch.arange(8) % args.scenes]
        ws = model.broadcast(model.mapping(z, ones))
        for res in (64, 128):
            target = render_sdf(scene_of(z, ones), cam, res, steps=48)
            held_out[f"psnr_{res}"] = psnr(model.synthesize(ws, cam, (res, res)).clamp(-1, 1),
                                           target)
    print(json.dumps({"benchmark": "fit", "profile": args.profile, "scenes": args.scenes,
                      "steps": args.steps, "train_psnr": round(10 * math.log10(4 / running), 2),
                      "held_out_cameras": held_out,
                      "seconds": round(time.perf_counter() - start, 1)}, indent=2))


if __name__ == "__main__":
    main()
