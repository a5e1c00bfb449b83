"""Where a beats video cuts, and what each shot shows: the cut grid (every beat, bar, 2 or 4
bars, per section label) on the music's structure, each cut on the frame nearest its beat, and
each segment's seed and camera. Also the ``cuts.json`` sidecar that describes them. Torch-free.

Looks (``look``): ``section`` gives each section label one latent (seed + the label's index),
each cut inside a section turning the camera and moving the latent a little, the same way in
every section of that label (a chorus looks like the other choruses); ``cut`` gives every cut
a new seed. ``on_beat: move`` keeps one seed and only turns the camera.
"""

from __future__ import annotations

from typing import Any

from jobs.families.aether import CUT_EVERY

BARS = dict(zip(CUT_EVERY, (0, 1, 2, 4), strict=True))  # bars between cuts (0: each beat)
BEAT_TURN_DEG = 35.0  # the camera turns this far at each cut that keeps the look
EPS = 1e-6


def rule_for(cut_every: str | dict[str, str] | None, label: str) -> str:
    """The cut rule of a section: one rule for all, or the label's (``beat`` when unnamed)."""
    if isinstance(cut_every, dict):
        return cut_every.get(label, "beat")
    return cut_every or "beat"


def grid(structure: dict[str, Any], cut_every: str | dict[str, str] | None
         ) -> list[tuple[float, int]]:
    """The cut times (s) with the index of the section each falls in, in order. Every section
    after the first starts with a cut (on its first bar), then cuts on its own rule."""
    beats = [float(b) for b in structure.get("beats", [])]
    downbeats = [float(d) for d in structure.get("downbeats", [])]
    points: list[tuple[float, int]] = []
    for k, sec in enumerate(sections_of(structure)):
        start, end = float(sec["start"]), float(sec["end"])
        step = BARS[rule_for(cut_every, str(sec["label"]))]
        if step == 0:
            times = [b for b in beats if start - EPS <= b < end - EPS]
        else:
            times = [d for d in downbeats if start - EPS <= d < end - EPS][::step]
        if k > 0 and not (times and abs(times[0] - start) < EPS):
            times = [start, *times]
        points += [(t, k) for t in times]
    return points


def sections_of(structure: dict[str, Any]) -> list[dict[str, Any]]:
    """The structure's sections, or one section ``A`` over the whole track."""
    found = structure.get("sections") or []
    return found or [{"start": 0.0, "end": float(structure.get("duration", 0.0)) + 1.0,
                      "label": "A"}]


def segments(structure: dict[str, Any], fps: int, frames: int, params: dict[str, Any],
             seed: int) -> list[dict[str, Any]]:
    """The video's segments, in the shape of ``cuts.json``: each cut on the frame nearest its
    time (``round(t * fps)``, never a frame late); cuts that would land on frame 0, past the
    end, or on the same frame as the cut before are dropped. Each segment also carries
    ``variation`` (its cut's number inside its section; popped before writing the sidecar)."""
    secs = sections_of(structure)
    order: dict[str, int] = {}
    for sec in secs:
        order.setdefault(str(sec["label"]), len(order))
    starts: list[tuple[int, float | None, int]] = [(0, None, 0)]
    for t, k in grid(structure, params.get("cut_every")):
        frame = round(t * fps)
        if 0 < frame < frames and frame > starts[-1][0]:
            starts.append((frame, t, k))
    look = params.get("look") or "section"
    move = params.get("on_beat") == "move"
    yaw0 = float(params.get("yaw", 0.0))
    out: list[dict[str, Any]] = []
    within = 0
    for i, (frame, beat, k) in enumerate(starts):
        label = str(secs[k]["label"])
        within = within + 1 if i and k == out[-1]["section_index"] else 0
        if move:
            seg_seed, yaw, variation = seed, _wrap(yaw0 + BEAT_TURN_DEG * i), 0
        elif look == "cut":
            seg_seed, yaw, variation = seed + i, yaw0, 0
        else:
            seg_seed, yaw, variation = seed + order[label], _wrap(yaw0 + BEAT_TURN_DEG * within), within
        end = starts[i + 1][0] if i + 1 < len(starts) else frames
        out.append({"index": i, "start_frame": frame, "end_frame": end,
                    "start": round(frame / fps, 6), "end": round(end / fps, 6),
                    "beat": None if beat is None else round(beat, 6), "section": label,
                    "section_index": k, "seed": int(seg_seed), "yaw": round(yaw, 4),
                    "variation": variation})
    return out


def sidecar(segs: list[dict[str, Any]], structure: dict[str, Any], params: dict[str, Any],
            audio_key: str, audio_sha256: str | None) -> dict[str, Any]:
    """The ``cuts.json`` of a beats video (version 1): what each segment shows and the music
    it was cut to; timeline export builds clips and markers from it."""
    return {"version": 1, "fps": params["fps"], "frames": segs[-1]["end_frame"] if segs else 0,
            "width": params["width"], "height": params["height"],
            "audio": {"key": audio_key, "sha256": audio_sha256},
            "segments": [{k: v for k, v in s.items() if k != "variation"} for s in segs],
            "sections": [{"start": s["start"], "end": s["end"], "label": s["label"]}
                         for s in structure.get("sections", [])],
            "beats": list(structure.get("beats", [])),
            "downbeats": list(structure.get("downbeats", []))}


def _wrap(deg: float) -> float:
    """Degrees into [-180, 180), as camera yaws are given."""
    return (deg + 180.0) % 360.0 - 180.0
