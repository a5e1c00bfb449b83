"""Images per second for each kind on this machine's CPU: at batch 1 and at the best batch size,
through the pipeline (forward pass, uint8 conversion, PNG encoding) and for the same model in a
bare torch loop (forward pass only). Both compute modes: exact (float64, batch-invariant bytes)
and fast (float32).

    python benchmarks/models.py [--profile default] [--size 128] [--seconds 3]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from jobs.settings import Settings  # noqa: E402
from workers.models.aether import Camera  # noqa: E402
from workers.pipelines import make_pipeline  # noqa: E402

BATCHES = [1, 4, 8, 16, 32]


def rate(fn: Callable[[], int], seconds: float) -> float:
    """Items per second of ``fn`` (which returns how many items it made), after a warm-up."""
    fn()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        done += fn()
    return done / (time.perf_counter() - start)


def gen_params(i: int, size: int) -> dict[str, Any]:
    return {"seed": i, "width": size, "height": size, "truncation": 0.7, "yaw": float(i % 60),
            "pitch": 0.0, "radius": 2.7, "fov": 36.0, "save_latent": False, "model": "aether"}


def jobs_for(kind: str, n: int, size: int) -> list[dict[str, Any]]:
    src = [gen_params(i, size) for i in range(n)]
    common = {"width": size, "height": size, "model": "aether"}
    if kind == "generate":
        return src
    if kind == "edit:latent":
        return [{"op": "latent", "source": {"params": s}, "direction": 0, "strength": 3.0, **common}
                for s in src]
    if kind == "edit:rerender":
        return [{"op": "rerender", "source": {"params": s}, "yaw": 45.0, "pitch": 10.0,
                 "radius": 2.7, "fov": 36.0, **common} for s in src]
    if kind == "edit:image":
        return [{"op": "image", "source": {"params": s}, "model": "aether",
                 "ops": [{"brightness": 0.1}, {"blur": 1.5}, {"saturation": 1.3}]} for s in src]
    raise KeyError(kind)


def measure(kind: str, settings: Settings, size: int, seconds: float) -> dict[str, Any]:
    pipe = make_pipeline(kind.split(":")[0], settings)
    pipe.setup("cpu")
    out: dict[str, Any] = {}
    for n in BATCHES:
        jobs = jobs_for(kind, n, size)
        ctx = [{"job_id": f"j{i}", "batch_id": "b", "attempt": 1} for i in range(n)]

        def run(jobs: list[dict[str, Any]] = jobs, ctx: list[dict[str, Any]] = ctx) -> int:
            for arts in pipe.run(jobs, ctx):
                for art in arts:
                    art.encode()
            return len(jobs)

        out[n] = rate(run, seconds)
    best = max(out, key=out.get)
    return {"batch_1": round(out[1], 2), "best_batch": best, "best": round(out[best], 2),
            "by_batch": {str(k): round(v, 2) for k, v in out.items()}}


def measure_bare(settings: Settings, size: int, seconds: float) -> dict[str, Any]:
    """The generator alone: the same forward pass in a plain loop, no pipeline around it."""
    from workers.models.registry import load_model

    model = load_model("aether", settings, "cpu")
    m, dtype = model.module, model.dtype
    out = {}
    for n in BATCHES:
        z = m.latents(list(range(n))).to(dtype)
        trunc = torch.full((n,), 0.7, dtype=dtype)
        cam = Camera.of([gen_params(i, size) for i in range(n)], dtype=dtype)

        def run(z: torch.Tensor = z, trunc: torch.Tensor = trunc, cam: Camera = cam, n: int = n) -> int:
            with torch.no_grad():
                m.synthesize(m.broadcast(m.mapping(z, trunc)), cam, (size, size))
            return n

        out[n] = rate(run, seconds)
    best = max(out, key=out.get)
    return {"batch_1": round(out[1], 2), "best_batch": best, "best": round(out[best], 2)}


def measure_video(settings: Settings, size: int) -> dict[str, Any]:
    pipe = make_pipeline("video", settings)
    pipe.setup("cpu")

    class Memory:
        def __init__(self) -> None:
            self.objects: dict[str, bytes] = {}

        def list(self, prefix: str) -> list[str]:
            return [k for k in self.objects if k.startswith(prefix)]

        def put(self, key: str, data: bytes, content_type: str) -> None:
            self.objects[key] = data

        def get(self, key: str, sha256: str | None = None) -> bytes:
            return self.objects[key]

        def delete(self, key: str) -> None:
            self.objects.pop(key, None)

    frames = 96
    job = {"mode": "orbit", "seed": 1, "truncation": 0.7, "frames": frames, "fps": 24,
           "width": size, "height": size, "yaw_from": -180.0, "yaw_to": 180.0, "yaw": 0.0,
           "pitch": 10.0, "radius": 2.7, "fov": 36.0, "chunk_frames": 48, "model": "aether"}
    store = Memory()
    ctx = {"job_id": "j", "batch_id": "b", "attempt": 1, "storage": store,
           "key": lambda name: f"p/b/j/{name}", "prefix": "p/b/j/", "still_held": lambda: True}
    start = time.perf_counter()
    [art] = pipe.run([job], [ctx])[0]
    size_bytes = len(art.encode())
    seconds = time.perf_counter() - start
    return {"frames": frames, "frames_per_s": round(frames / seconds, 2), "mp4_bytes": size_bytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    result: dict[str, Any] = {"benchmark": "models", "device": "cpu", "threads":
                              torch.get_num_threads(), "profile": args.profile,
                              "size": f"{args.size}x{args.size}", "unit": "images/s"}
    for mode, exact in (("exact_float64", True), ("fast_float32", False)):
        settings = Settings(model_profile=args.profile, exact_cpu=exact, max_batch=32)
        section: dict[str, Any] = {"bare_torch_generator": measure_bare(settings, args.size,
                                                                        args.seconds)}
        for kind in ("generate", "edit:latent", "edit:rerender", "edit:image"):
            section[kind] = measure(kind, settings, args.size, args.seconds)
        section["video:orbit"] = measure_video(settings, args.size)
        result[mode] = section
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
