"""The generate model on this machine's device: images per second at each pass size, and the
share of the time the device was busy, with the worker's own family code and its overlap
(PNG encoding in threads beside the next pass).

    python benchmarks/device.py [--device cuda|cpu] [--profile default] [--size 128]
                                [--batches 1,2,4,8,16,32] [--seconds 3] [--autocast auto]
                                [--compile] [--float32]

Per pass size: one warm-up pass (and, with ``--compile``, its compilation), then passes for
``--seconds``. ``device_busy`` is the device's time in passes over the wall time: on CUDA,
measured by events recorded on the stream around each pass (what the GPU spent from the pass's
first kernel to its last copy); on the CPU, the passes' own time. What is left is the host's
share: latents, cameras, encoding, the next pass's set-up. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.models import contexts, gen_params  # noqa: E402
from jobs.catalog import ModelEntry  # noqa: E402
from jobs.settings import Settings  # noqa: E402
from workers.families.aether import AetherFamily  # noqa: E402
from workers.family import JobContext  # noqa: E402
from workers.runner import default_dtype  # noqa: E402


def measure(fam: AetherFamily, batch: int, size: int, seconds: float, cuda: bool
            ) -> dict[str, Any]:
    encode = ThreadPoolExecutor(8)
    seed = 0

    def jobs() -> list[JobContext]:
        nonlocal seed
        seed += batch
        return contexts("generate", [gen_params(seed + i, size) for i in range(batch)], None)

    t = time.perf_counter()
    for arts in fam.run(jobs()):  # warm-up (and compilation)
        arts[0].encode()  # type: ignore[index]
    warm = time.perf_counter() - t
    busy = 0.0
    images = 0
    pending: list[Any] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        if cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
        t = time.perf_counter()
        results = fam.run(jobs())
        if cuda:
            end.record()
            end.synchronize()
            busy += begin.elapsed_time(end) / 1000
        else:
            busy += time.perf_counter() - t
        pending += [encode.submit(arts[0].encode) for arts in results]  # type: ignore[index]
        while len(pending) > 4 * batch:  # bounded, as the worker's uploads are
            pending.pop(0).result()
        images += batch
    for f in pending:
        f.result()
    wall = time.perf_counter() - start
    encode.shutdown()
    return {"images_per_s": round(images / wall, 2), "device_busy": round(min(busy / wall, 1), 3),
            "first_pass_s": round(warm, 3), "passes": images // batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--profile", default="default")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batches", default="1,2,4,8,16,32")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--autocast", default="auto", choices=("auto", "bfloat16", "float16", "off"))
    parser.add_argument("--compile", action="store_true", help="torch.compile the synthesis")
    parser.add_argument("--float32", action="store_true",
                        help="on the CPU, float32 instead of the exact float64 default")
    args = parser.parse_args()
    settings = Settings(model_profile=args.profile, exact_cpu=not args.float32)
    options = {"profile": args.profile, "autocast": args.autocast, "compile": args.compile}
    fam = AetherFamily(ModelEntry("aether", "aether", None, None, options, ""), settings)
    fam.setup(args.device, default_dtype(settings, args.device))
    cuda = torch.device(args.device).type == "cuda"
    by_batch = {int(b): measure(fam, int(b), args.size, args.seconds, cuda)
                for b in args.batches.split(",")}
    best = max(by_batch, key=lambda b: by_batch[b]["images_per_s"])
    print(json.dumps({
        "benchmark": "device", "device": args.device,
        "device_name": torch.cuda.get_device_name(args.device) if cuda else "cpu",
        "cpus": os.cpu_count(), "torch": torch.__version__, "profile": args.profile,
        "size": args.size, "compute": str(fam.dtype).removeprefix("torch."),
        "autocast": str(fam.half).removeprefix("torch.") if fam.half else "off",
        "compile": args.compile, "weights": fam.loaded.weights, "by_batch": by_batch,
        "best_batch": best, "best_images_per_s": by_batch[best]["images_per_s"],
    }, indent=2))


if __name__ == "__main__":
    main()
