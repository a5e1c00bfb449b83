"""Accuracy of the audio analysis (workers.audio) on synthesized tracks whose structure is known
(tests/music.py): beat error in ms and in frames at 24, 25 and 30 fps (where a cut lands),
downbeat accuracy, tempo-change and section-boundary error, section labels, and the analysis
time per minute of music. Then the known hard cases, reported apart.

    python benchmarks/audio.py [--quick]

Prints one JSON object. CPU only; about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.music import Track, synth  # noqa: E402
from workers.audio import analyse  # noqa: E402

TRACKS = [  # form, bars per section, bpm, bpm after the change, seed, harder variants
    {"form": "ABA", "bars": 8, "bpm": 120, "change_bpm": 150, "seed": 0},
    {"form": "ABA", "bars": 8, "bpm": 100, "change_bpm": 128, "seed": 1},
    {"form": "ABA", "bars": 8, "bpm": 128, "change_bpm": 96, "seed": 2},
    {"form": "ABAB", "bars": 6, "bpm": 90, "change_bpm": 110, "seed": 4},
    {"form": "ABCA", "bars": [4, 8, 4, 4], "bpm": 110, "change_bpm": 140, "seed": 6},
    {"form": "ABAB", "bars": 8, "bpm": 140, "change_bpm": 168, "seed": 7},
    {"form": "ABA", "bars": 8, "bpm": 120, "change_bpm": 150, "seed": 10, "offbeats": 0.15},
    {"form": "ABAB", "bars": 6, "bpm": 96, "change_bpm": 120, "seed": 12, "noise": 0.05},
]
HARD = [  # where it fails, on purpose: see docs/music-video.md
    {"form": "ABA", "bars": 8, "bpm": 140, "change_bpm": 175, "seed": 3},  # half tempo > 170
    {"form": "ABA", "bars": 8, "bpm": 150, "change_bpm": 120, "seed": 13, "offbeats": 0.2},
]
FPS = (24, 25, 30)


START = 0.237  # the first beat: off the frame grids, so no true beat sits half-way between frames


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    track: Track = synth(**{"start": START, **spec})
    t0 = time.perf_counter()
    found = analyse(track.samples, track.rate)
    seconds = time.perf_counter() - t0
    truth, got = np.array(track.beats), np.array(found["beats"])
    signed = np.array([got[np.abs(got - t).argmin()] - t for t in truth]) if len(got) else (
        np.full(len(truth), np.inf))
    downbeats = np.array(found["downbeats"])
    db_hit = [bool(len(downbeats)) and float(np.abs(downbeats - t).min()) <= 0.07
              for t in track.downbeats]
    bounds = [s["start"] for s in found["sections"][1:]]
    bound_err = [min((abs(b - t) for b in bounds), default=float("inf"))
                 for t in track.boundaries()]
    changes = [t["start"] for t in found["tempo"][1:]]
    return {"spec": spec, "signed": signed, "seconds": seconds, "duration": track.duration,
            "frames": {fps: [round(float(t + e) * fps) - round(float(t) * fps)
                             for t, e in zip(truth, signed, strict=True)] for fps in FPS},
            "downbeats_hit": db_hit, "boundary_err": bound_err,
            "labels_ok": [s["label"] for s in found["sections"]] == list(spec["form"]),
            "tempo_change_err": min((abs(c - track.tempo_change) for c in changes),
                                    default=float("inf")),
            "tempo_entries": len(found["tempo"]), "extra_beats": len(got) - len(truth)}


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    err_ms = np.abs(np.concatenate([r["signed"] for r in runs])) * 1000
    out: dict[str, Any] = {
        "tracks": len(runs), "beats": len(err_ms),
        "beat_error_ms": {"median": round(float(np.median(err_ms)), 2),
                          "p95": round(float(np.percentile(err_ms, 95)), 2),
                          "max": round(float(err_ms.max()), 2)},
        "beat_error_frames": {}, "cut_frame": {},
    }
    for fps in FPS:
        frames = err_ms / 1000 * fps
        off = np.abs(np.concatenate([r["frames"][fps] for r in runs]))
        out["beat_error_frames"][str(fps)] = {"median": round(float(np.median(frames)), 3),
                                              "p95": round(float(np.percentile(frames, 95)), 3),
                                              "max": round(float(frames.max()), 3)}
        # where the cut lands against the frame nearest the true beat
        out["cut_frame"][str(fps)] = {"same_frame": round(float(np.mean(off == 0)), 4),
                                      "max_frames_off": int(off.max())}
    hits = [h for r in runs for h in r["downbeats_hit"]]
    bounds = [e for r in runs for e in r["boundary_err"]]
    out.update({
        "downbeat_accuracy": round(float(np.mean(hits)), 4),
        "section_boundary_error_s": {"median": round(float(np.median(bounds)), 3),
                                     "max": round(float(np.max(bounds)), 3),
                                     "boundaries": len(bounds)},
        "section_labels_correct": f"{sum(r['labels_ok'] for r in runs)}/{len(runs)}",
        "tempo_change_error_s": {"max": round(max(r["tempo_change_err"] for r in runs), 3)},
        "tempo_map_entries": sorted({r["tempo_entries"] for r in runs}),
        "extra_beats": [r["extra_beats"] for r in runs],
        "analysis_s_per_minute": round(sum(r["seconds"] for r in runs)
                                       / sum(r["duration"] for r in runs) * 60, 2),
    })
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Three tracks, no hard cases.")
    args = parser.parse_args()
    analyse(synth("ABA", bars=2).samples, 22050)  # warm up librosa's caches: not measured
    tracks = TRACKS[:3] if args.quick else TRACKS
    result = {"benchmark": "audio structure on synthesized tracks (tests/music.py)",
              **summary([measure(t) for t in tracks])}
    if not args.quick:
        hard = [measure(t) for t in HARD]
        result["hard_cases"] = [
            {"spec": h["spec"], "beat_error_ms_median": round(float(np.median(
                np.abs(h["signed"]) * 1000)), 1), "beat_error_ms_max": round(float(np.max(
                    np.abs(h["signed"]) * 1000)), 1),
             "downbeat_accuracy": round(float(np.mean(h["downbeats_hit"])), 3),
             "extra_beats": h["extra_beats"]} for h in hard]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
