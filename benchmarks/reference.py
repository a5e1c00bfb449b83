"""How well the shipped reference weights reproduce their procedural scenes: on held-out seeds and
cameras, the generator's image against the analytic render of the same scene (PSNR, dB), and the
same from a camera turned 40 degrees (3D consistency: a re-render is the same object), per
profile. Also the seeded untrained weights, for scale.

    python benchmarks/reference.py [--profiles tiny,default] [--seeds 32] [--size 128]
        [--sheet docs/reference-sheet.png]

Prints one JSON object. With ``--sheet``, also runs ``genfarm demo`` (default profile, the
shipped weights) in a scratch folder, reports its time, and tiles its outputs into a contact
sheet: row 1 the generated seeds 0..3, each at yaw -30, 0, 30; row 2 seeds 42..45 (pitch 15)
each beside its camera re-render (yaw 60); row 3 every 4th frame of the orbit video.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from jobs.registry import ModelEntry  # noqa: E402
from jobs.settings import Settings  # noqa: E402
from workers.families.aether.train import evaluate  # noqa: E402
from workers.families.aether.weights import load_model  # noqa: E402

HELD_OUT = 900_000  # training draws its latents from torch.randn; jobs' seeds from here are unseen


TILE = 128


def contact_sheet(out: Path) -> dict[str, object]:
    """Run the demo in a scratch folder and tile its outputs into ``out`` (PNG)."""
    import av
    import numpy as np
    from PIL import Image

    from storage.provenance import read_png_provenance

    with tempfile.TemporaryDirectory(prefix="genfarm-sheet-") as tmp:
        genfarm = str(Path(sys.executable).with_name("genfarm"))
        run = subprocess.run([genfarm, "demo", "--data-dir", tmp], capture_output=True, text=True, timeout=600,
                             cwd=Path(__file__).resolve().parents[1])
        took = re.search(r"batch (\w+) in ([0-9.]+)s", run.stdout)
        gen: dict[tuple[int, float, float], np.ndarray] = {}
        rerender: dict[int, np.ndarray] = {}
        frames: list[np.ndarray] = []
        for path in sorted(Path(tmp).rglob("*")):
            if path.name == "image.png":
                prov = read_png_provenance(path.read_bytes())
                pixels = np.asarray(Image.open(path).convert("RGB"))
                params = prov["params"]
                if prov["kind"] == "generate":
                    gen[(params["seed"], params.get("yaw", 0.0), params.get("pitch", 0.0))] = pixels
                elif prov.get("op") == "rerender":
                    rerender[params["source"]["params"]["seed"]] = pixels
            elif path.name == "video.mp4":
                with av.open(str(path)) as container:
                    frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        blank = np.full((TILE, TILE, 3), 255, np.uint8)
        rows = [[gen.get((s, yaw, 0.0), blank) for s in range(4) for yaw in (-30, 0, 30)]]
        rows.append([img for s in range(42, 46)
                     for img in (gen.get((s, 0.0, 15.0), blank), rerender.get(s, blank))])
        rows.append(frames[::4][:12])
        cols = max(len(r) for r in rows)
        sheet = np.concatenate([np.concatenate(r + [blank] * (cols - len(r)), axis=1)
                                for r in rows])
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(sheet).save(out, optimize=True)
    return {"sheet": str(out), "demo_status": took.group(1) if took else run.stdout[-300:],
            "demo_seconds": float(took.group(2)) if took else None,
            "outputs": {"generate": len(gen), "rerender": len(rerender), "orbit_frames": len(frames)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", default="tiny,default")
    parser.add_argument("--seeds", type=int, default=32)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--sheet", type=Path, default=None, help="Also write the contact sheet.")
    args = parser.parse_args()
    seeds = list(range(HELD_OUT, HELD_OUT + args.seeds))
    report: dict[str, object] = {"seeds": f"{seeds[0]}..{seeds[-1]}", "size": args.size,
                                 "truncation": 0.7, "turn_deg": 40.0,
                                 "threads": torch.get_num_threads()}
    for profile in args.profiles.split(","):
        for weights in (None, "seeded"):
            start = time.perf_counter()
            loaded = load_model(ModelEntry("aether", "aether", weights, None, {"profile": profile}),
                                Settings(), "cpu", torch.float32)
            scores = evaluate(loaded.module, seeds, args.size)
            report[profile if weights is None else f"{profile}_seeded"] = {
                **scores, "weights": loaded.weights, "seconds": round(time.perf_counter() - start, 1)}
    if args.sheet:
        report["demo"] = contact_sheet(args.sheet)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
