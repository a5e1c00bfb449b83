"""One manifest mixing generate, edit and video jobs (edits and videos start from generate jobs
of the same manifest, by reference) through a real worker; every output is opened and checked."""

from __future__ import annotations

import io
import json
import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from jobs.db import upgrade
from storage import open_storage
from tests.conftest import Workers, run_cli
from tests.helpers import Db
from tests.music import to_wav

CLICKS = [0.5 + 0.5 * i for i in range(8)]  # a click every half second: 120 bpm
FPS = 24


def click_track(seconds: float = 4.6, rate: int = 22050) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    signal = np.zeros_like(t)
    for c in CLICKS:
        burst = (t >= c) & (t < c + 0.015)
        signal[burst] = np.sin(2 * np.pi * 2000 * t[burst]) * np.exp(-(t[burst] - c) * 300)
    return to_wav(signal * (30000 / 32767), rate)


def decode(data: bytes) -> tuple[list[np.ndarray], Fraction, float, bool]:
    with av.open(io.BytesIO(data)) as c:
        vs = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(vs)]
        has_audio = bool(c.streams.audio)
        duration = float(c.duration / av.time_base) if c.duration else 0.0
        return frames, vs.average_rate, duration, has_audio


def test_mixed_manifest_of_all_kinds(tmp_path: Path, workers: Workers, pg_url: str,
                                     redis_url: str) -> None:
    storage_url = (tmp_path / "out").as_uri()
    env = {"GENFARM_DATABASE_URL": pg_url, "GENFARM_BROKER_URL": redis_url,
           "GENFARM_STORAGE_URL": storage_url, "GENFARM_MODEL_PROFILE": "tiny",
           "GENFARM_DATA_DIR": str(tmp_path / "data")}
    upgrade(pg_url)
    store = open_storage(storage_url)
    store.put("acme/audio/clicks.wav", click_track(), "audio/wav")
    store.put("acme/audio/not-audio.wav", b"this is text, not sound", "audio/wav")
    lines = [
        {"kind": "generate", "seed": [11, 12], "width": 64, "height": 64},  # line 1
        {"kind": "generate", "seed": 40, "width": 64, "height": 64, "yaw": 20},  # line 2
        {"kind": "edit", "op": "latent", "source": {"line": 1}, "direction": 1, "strength": 4},
        {"kind": "edit", "op": "style_mix", "source": {"line": 1}, "mix_seed": 99, "layers": "coarse"},
        {"kind": "edit", "op": "rerender", "source": {"line": 1}, "yaw": -45, "width": 96, "height": 96},
        {"kind": "edit", "op": "image", "source": {"line": 2},
         "ops": [{"resize": [80, 48]}, {"saturation": 1.5}, {"color_transfer": {"line": 2}}]},
        {"kind": "video", "mode": "orbit", "source": {"line": 2}, "frames": 30, "fps": FPS,
         "width": 64, "height": 64, "chunk_frames": 8},
        {"kind": "video", "mode": "interpolate", "seeds": [1, 2, 3], "frames": 20, "fps": 10,
         "width": 64, "height": 48},
        {"kind": "video", "mode": "beats", "seed": 500, "audio": {"key": "acme/audio/clicks.wav"},
         "fps": FPS, "width": 64, "height": 64, "on_beat": "cut", "chunk_frames": 32},
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    result = run_cli("submit", str(path), "--project", "acme", "--json", env=env)
    assert result.returncode == 0, result.stderr
    batch = json.loads(result.stdout)["batch_id"]
    assert json.loads(result.stdout)["job_count"] == 2 + 1 + 2 + 2 + 2 + 1 + 1 + 1 + 1

    db = Db(pg_url)
    workers.start(env, "--max-batch", "8")
    db.wait(batch, workers, timeout=300)
    jobs = {j.id: j for j in db.jobs(batch)}
    assert {j.status for j in jobs.values()} == {"succeeded"}, [(j.kind, j.error) for j in jobs.values()]
    every = db.outputs(batch)
    sidecars = sorted(o.name for o in every if o.name in ("cuts.json", "structure.json"))
    assert sidecars == ["cuts.json", "structure.json"]  # beside the beats video's MP4
    outputs = [o for o in every if o.name not in sidecars]
    assert len(outputs) == len(jobs)
    for out in outputs:
        job = jobs[out.job_id]
        data = store.get(out.key, sha256=out.sha256)
        p = job.params
        if job.kind in ("generate", "edit"):
            with Image.open(io.BytesIO(data)) as im:
                size = im.size
            expected = (80, 48) if p.get("op") == "image" else (p["width"], p["height"])
            assert size == expected, (job.kind, p.get("op"), size)
            if job.kind == "edit":  # references were resolved to the source job's id
                assert jobs[p["source"]["job"]].kind == "generate"
            continue
        frames, rate, duration, has_audio = decode(data)
        if p["mode"] == "orbit":
            assert len(frames) == 30 and rate == FPS and abs(duration - 30 / FPS) < 0.1
            assert frames[0].shape == (64, 64, 3) and not has_audio
        elif p["mode"] == "interpolate":
            assert len(frames) == 20 and rate == 10 and frames[0].shape == (48, 64, 3)
        else:
            assert has_audio and rate == FPS
            assert abs(len(frames) - math.ceil(4.6 * FPS)) <= 1
            diffs = [np.abs(frames[i].astype(int) - frames[i - 1].astype(int)).mean()
                     for i in range(1, len(frames))]
            cuts = [i / FPS for i, d in enumerate(diffs, start=1) if d > 4 * np.median(diffs) + 1]
            assert len(cuts) >= len(CLICKS) - 2, (cuts, sorted(diffs)[-10:])
            for cut in cuts:  # every cut falls within one frame of a click
                assert min(abs(cut - c) for c in CLICKS) <= 1 / FPS + 1e-9, (cut, cuts)
    keys = set(store.list(store.batch_prefix("acme", batch)))
    assert not [k for k in keys if "/chunk-" in k]  # resumable chunks are gone once the MP4 is in
    db.close()

    # validation against the store and the database: named lines, nothing written
    bad = [{"kind": "edit", "op": "latent", "source": {"job": "0" * 32}},
           {"kind": "video", "mode": "beats", "seed": 1, "audio": {"key": "acme/audio/not-audio.wav"}},
           {"kind": "video", "mode": "beats", "seed": 1, "audio": {"key": "acme/audio/missing.wav"}},
           {"kind": "edit", "op": "image", "source": {"key": "../../etc/passwd"},
            "ops": [{"flip": "vertical"}]}]
    path.write_text("\n".join(json.dumps(x) for x in bad) + "\n")
    result = run_cli("submit", str(path), "--project", "acme", env=env)
    assert result.returncode == 2, result.stderr
    for expected in ("1: source: source job 0000", "does not exist", "2: audio:",
                     "is not an audio file", "3: audio: no object", "4: source: no object"):
        assert expected in result.stderr, (expected, result.stderr)
    ok_edit = next(j for j in jobs.values() if j.kind == "generate")
    path.write_text(json.dumps({"kind": "edit", "op": "rerender", "source": {"job": ok_edit.id},
                                "yaw": 90}) + "\n")
    again = run_cli("submit", str(path), "--project", "acme", "--json", env=env)
    assert again.returncode == 0, again.stderr  # a finished job of an earlier batch is a source
    other = run_cli("submit", str(path), "--project", "studio-b", env=env)
    assert other.returncode == 2 and "does not exist in this project" in other.stderr
