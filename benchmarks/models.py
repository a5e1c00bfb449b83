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

from jobs.catalog import load_catalog  # noqa: E402
from jobs.settings import Settings  # noqa: E402
from storage import open_storage  # noqa: E402
from workers.families.aether.network import Camera  # noqa: E402
from workers.families.aether.weights import load_model  # noqa: E402
from workers.family import Family, JobContext  # noqa: E402
from workers.runner import default_dtype  # noqa: E402

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


def aether(settings: Settings) -> Family:
    """The family as a worker process builds it: from the models catalog, on the CPU."""
    catalog = load_catalog(settings)
    fam: Family = catalog.family("aether").load_worker()(catalog.models["aether"], settings)
    fam.setup("cpu", default_dtype(settings, "cpu"))
    return fam


def contexts(kind: str, jobs: list[dict[str, Any]], store: Any) -> list[JobContext]:
    return [JobContext(f"j{i}", "b", "p", 1, kind, job, store) for i, job in enumerate(jobs)]


def measure(kind: str, settings: Settings, size: int, seconds: float, store: Any) -> dict[str, Any]:
    fam = aether(settings)
    out: dict[str, Any] = {}
    for n in BATCHES:
        ctx = contexts(kind.split(":")[0], jobs_for(kind, n, size), store)

        def run(ctx: list[JobContext] = ctx) -> int:
            for arts in fam.run(ctx):
                assert isinstance(arts, list)
                for art in arts:
                    art.encode()
            return len(ctx)

        out[n] = rate(run, seconds)
    best = max(out, key=out.get)
    return {"batch_1": round(out[1], 2), "best_batch": best, "best": round(out[best], 2),
            "by_batch": {str(k): round(v, 2) for k, v in out.items()}}


def measure_bare(settings: Settings, size: int, seconds: float) -> dict[str, Any]:
    """The generator alone: the same forward pass in a plain loop, no pipeline around it."""
    model = load_model(load_catalog(settings).models["aether"], settings, "cpu")
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


def measure_video(settings: Settings, size: int, store: Any) -> dict[str, Any]:
    fam = aether(settings)
    frames = 96
    job = {"mode": "orbit", "seed": 1, "truncation": 0.7, "frames": frames, "fps": 24,
           "width": size, "height": size, "yaw_from": -180.0, "yaw_to": 180.0, "yaw": 0.0,
           "pitch": 10.0, "radius": 2.7, "fov": 36.0, "chunk_frames": 48, "model": "aether"}
    start = time.perf_counter()
    [arts] = fam.run(contexts("video", [job], store))
    assert isinstance(arts, list)
    [art] = arts
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
    import tempfile

    store = open_storage(Path(tempfile.mkdtemp(prefix="genfarm-bench-")).as_uri())
    result: dict[str, Any] = {"benchmark": "models", "device": "cpu", "threads":
                              torch.get_num_threads(), "profile": args.profile,
                              "size": f"{args.size}x{args.size}", "unit": "images/s"}
    for mode, exact in (("exact_float64", True), ("fast_float32", False)):
        settings = Settings(model_profile=args.profile, exact_cpu=exact, max_batch=32)
        section: dict[str, Any] = {"bare_torch_generator": measure_bare(settings, args.size,
                                                                        args.seconds)}
        for kind in ("generate", "edit:latent", "edit:rerender", "edit:image"):
            section[kind] = measure(kind, settings, args.size, args.seconds, store)
        section["video:orbit"] = measure_video(settings, args.size, store)
        result[mode] = section
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
