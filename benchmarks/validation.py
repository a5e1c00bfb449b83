"""What validating a small manifest costs, whatever it says: manifests of under 1 KB that ask for
as many jobs as they can (sweeps, counts, line references that multiply, errors before the big
lines), each parsed whole. Reports wall and CPU seconds and peak extra memory (tracemalloc) for
the worst cases and the maximum over random ones.

    python benchmarks/validation.py [--random 200]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib

from jobs.errors import ManifestError  # noqa: E402
from jobs.manifest import MAX_JOBS, default_catalog, parse_manifest  # noqa: E402

WORST = {
    "one sweep at the limit": f'{{"kind": "generate", "seed": {{"range": [0, {MAX_JOBS}]}}}}',
    "float sweep at the limit": '{"kind": "generate", "seed": 1, "yaw": {"range": [0, 1, 1e-5]}}',
    "sweeps whose product is huge": '{"kind": "generate", "seed": {"range": [0, 99999]}, '
                                    '"yaw": {"range": [-180, 180, 1e-3]}, '
                                    '"pitch": {"range": [-89, 89, 1e-3]}}',
    "count times sweeps": '{"kind": "generate", "seed": 1, "count": 99999, '
                          '"yaw": [1, 2, 3, 4, 5, 6, 7, 8]}',
    "line references multiply": '{"kind": "generate", "seed": {"range": [0, 50000]}}\n'
                                '{"kind": "edit", "op": "rerender", "source": {"line": 1}, '
                                '"yaw": {"range": [0, 90]}}',
    "an error, then the limit twice": '{"kind": "generate", "seed": "x"}\n'
                                      + '{"kind": "generate", "seed": {"range": [0, 99999]}}\n' * 8,
    "an edit of every job at the limit": '{"kind": "generate", "seed": {"range": [0, 50000]}}\n'
                                         '{"kind": "edit", "op": "latent", "source": {"line": 1}}',
}


def measure(text: str) -> dict[str, Any]:
    catalog = default_catalog()
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        outcome = f"accepted: {len(parse_manifest(text, catalog=catalog))} jobs"
    except ManifestError as exc:
        outcome = "refused: " + str(exc.errors[-1].message)[:90]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    tracemalloc.start()
    with contextlib.suppress(ManifestError):
        parse_manifest(text, catalog=catalog)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"bytes": len(text.encode()), "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "peak_mb": round(peak / 2**20, 1), "outcome": outcome}


def random_manifest(rng: random.Random) -> str:
    lines: list[str] = []
    for i in range(rng.randint(1, 8)):
        line: dict[str, Any] = {"kind": "generate", "seed": rng.randint(0, 1000)}
        for field in rng.sample(["seed", "yaw", "pitch", "truncation", "count"], rng.randint(0, 3)):
            if field == "count":
                line["count"] = rng.choice([10, 1000, 99999])
            elif field == "truncation":
                line[field] = {"range": [0, 1, rng.choice([1e-2, 1e-4, 1e-6])]}
            else:
                line[field] = {"range": [0, rng.choice([10, 1000, 100000, 10**9])]}
        if i and rng.random() < 0.5:
            line = {"kind": "edit", "op": "rerender", "source": {"line": rng.randint(1, i)},
                    "yaw": {"range": [0, rng.choice([2, 90, 180])]}}
        lines.append(json.dumps(line))
    text = "\n".join(lines)
    while len(text.encode()) >= 1024:
        text = text.rsplit("\n", 1)[0]
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--random", type=int, default=200, help="random manifests to try")
    args = parser.parse_args()
    default_catalog()  # entry points read once, as in a long-running API
    worst = {name: measure(text) for name, text in WORST.items()}
    rng = random.Random(8)
    randoms = [measure(random_manifest(rng)) for _ in range(args.random)]
    print(json.dumps({
        "benchmark": "validation", "limit_jobs": MAX_JOBS, "bound": "1 KB: < 1 s, < 100 MB",
        "worst_cases": worst,
        "random": {"manifests": len(randoms),
                   "max_bytes": max(r["bytes"] for r in randoms),
                   "max_wall_s": max(r["wall_s"] for r in randoms),
                   "max_cpu_s": max(r["cpu_s"] for r in randoms),
                   "max_peak_mb": max(r["peak_mb"] for r in randoms)},
    }, indent=2))


if __name__ == "__main__":
    main()
