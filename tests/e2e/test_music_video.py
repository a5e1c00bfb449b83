"""A music video from a synthesized track whose beat grid is known: an audio job analyses it,
two beats videos (24 and 30 fps) cut on its structure by reference, through a real worker. The
cuts are found from the decoded frames and checked against the synthesizer's truth."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import av
import numpy as np
from sqlalchemy import func, select

from jobs.db import upgrade
from jobs.models import Batch
from storage import open_storage
from tests.conftest import Workers, run_cli
from tests.helpers import Db
from tests.music import Track, synth, to_wav

AUDIO_KEY = "acme/audio/song.wav"
CUT_EVERY = {"A": "bar", "B": "beat"}


def frames_of(data: bytes) -> tuple[list[np.ndarray], float]:
    with av.open(io.BytesIO(data)) as c:
        stream = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24").astype(np.int16) for f in c.decode(stream)]
        return frames, float(stream.average_rate)


def cuts_in(frames: list[np.ndarray]) -> list[int]:
    """The frames that differ sharply from the frame before (a shot starts there): measured
    here, a cut differs by 6.6 or more (mean absolute, 0..255), frames of one shot by 1.5 at
    most (the encoder's keyframes)."""
    diffs = np.array([np.abs(frames[i] - frames[i - 1]).mean() for i in range(1, len(frames))])
    return [i for i, d in enumerate(diffs, start=1) if d > 4 * np.median(diffs) + 3]


def true_grid(track: Track, fps: int, frames: int) -> list[int]:
    """The frames the rule should cut on: A sections on each bar, B on each beat, every
    section on its start; each on the frame nearest its time."""
    times = []
    for sec in track.sections:
        grid = track.downbeats if sec["label"] == "A" else track.beats
        times += [t for t in grid if sec["start"] - 1e-6 <= t < sec["end"] - 1e-6]
    return sorted({round(t * fps) for t in times} - {0} & set(range(1, frames)))


def test_a_music_video_cuts_on_the_beat_grid(tmp_path: Path, workers: Workers, pg_url: str,
                                             redis_url: str) -> None:
    track = synth("ABA", bars=4, bpm=140, change_bpm=168, seed=3)
    storage_url = (tmp_path / "out").as_uri()
    env = {"GENFARM_DATABASE_URL": pg_url, "GENFARM_BROKER_URL": redis_url,
           "GENFARM_STORAGE_URL": storage_url, "GENFARM_MODEL_PROFILE": "tiny",
           "GENFARM_DATA_DIR": str(tmp_path / "data")}
    upgrade(pg_url)
    store = open_storage(storage_url)
    store.put(AUDIO_KEY, track.wav, "audio/wav")
    video = {"kind": "video", "mode": "beats", "seed": 500, "audio": {"key": AUDIO_KEY},
             "structure": {"line": 1}, "cut_every": CUT_EVERY, "chunk_frames": 128}
    lines = [{"kind": "audio", "audio": {"key": AUDIO_KEY}},
             {**video, "fps": 24, "width": 64, "height": 64},
             {**video, "fps": 30, "width": 64, "height": 64}]
    path = tmp_path / "song.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    result = run_cli("submit", str(path), "--project", "acme", "--json", env=env)
    assert result.returncode == 0, result.stderr
    batch = json.loads(result.stdout)["batch_id"]

    db = Db(pg_url)
    workers.start(env, "--max-batch", "8")
    db.wait(batch, workers, timeout=240)
    jobs = db.jobs(batch)
    assert [j.status for j in jobs] == ["succeeded"] * 3, [(j.kind, j.error) for j in jobs]
    audio_job, videos = jobs[0], jobs[1:]
    outputs: dict[str, dict[str, Any]] = {}
    for out in db.outputs(batch):
        outputs.setdefault(out.job_id, {})[out.name] = store.get(out.key, sha256=out.sha256)
    assert set(outputs[audio_job.id]) == {"structure.json"}
    structure = json.loads(outputs[audio_job.id]["structure.json"])
    assert [s["label"] for s in structure["sections"]] == ["A", "B", "A"]

    for job in videos:
        fps = job.params["fps"]
        assert job.params["structure"]["job"] == audio_job.id  # the line, resolved
        assert set(outputs[job.id]) == {"video.mp4", "cuts.json"}  # no second analysis
        frames, rate = frames_of(outputs[job.id]["video.mp4"])
        assert rate == fps and len(frames) == math.ceil(track.duration * fps)
        found = cuts_in(frames)
        truth = true_grid(track, fps, len(frames))
        # every cut seen in the pictures is on a beat or bar of the truth, within one frame,
        # and there are as many as the rule makes (bars in A, beats in B)
        for cut in found:
            assert min(abs(cut - t) for t in truth) <= 1, (fps, cut, truth)
        assert len(found) == len(truth), (fps, found, truth)
        sidecar = json.loads(outputs[job.id]["cuts.json"])
        segments = sidecar["segments"]
        assert sidecar["fps"] == fps and sidecar["frames"] == len(frames)
        assert sidecar["audio"]["key"] == AUDIO_KEY and len(sidecar["audio"]["sha256"]) == 64
        assert [s["start_frame"] for s in segments[1:]] == found  # the sidecar is the video
        assert sidecar["beats"] == structure["beats"]
        assert sidecar["sections"] == [{k: s[k] for k in ("start", "end", "label")}
                                       for s in structure["sections"]]
        # one look per section label: the two A sections open on the same shot, B on another
        first = {}
        for seg in segments:
            first.setdefault(seg["section_index"], seg["start_frame"])
        a1, b, a2 = (frames[first[k]] for k in range(3))
        alike, unlike = np.abs(a1 - a2).mean(), np.abs(a1 - b).mean()
        assert alike < 0.25 * unlike, (fps, alike, unlike)
        assert {s["seed"] for s in segments if s["section"] == "A"} == {500}
        assert {s["seed"] for s in segments if s["section"] == "B"} == {501}
    db.close()

    # the same analysis from the command line: submitted, waited for, summed up
    shown = run_cli("audio", "analyse", "audio/song.wav", "-p", "acme", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    again_found = json.loads(shown.stdout)
    assert again_found["beats"] == structure["beats"]
    readable = run_cli("audio", "analyse", "audio/song.wav", "-p", "acme", env=env)
    assert readable.returncode == 0, readable.stderr
    out = readable.stdout
    assert "tempo     0:00.00  139.7 bpm" in out and "168." in out, out
    assert "sections  A  0:00.00  to  0:" in out and "\n          B  " in out, out
    missing = run_cli("audio", "analyse", "audio/none.wav", "-p", "acme", env=env)
    assert missing.returncode == 2 and "no object 'audio/none.wav'" in missing.stderr

    # validation against the database: a structure must be an audio job's; nothing written
    with Db(pg_url).sessions() as session:
        before = session.scalar(select(func.count()).select_from(Batch))
    for bad, expected in [
        ([{**video, "structure": {"job": videos[0].id}}, {**video, "structure": {"job": "0" * 32}}],
         [f"1: structure: source job {videos[0].id} is a video job; this takes the "
          "structure.json of audio jobs", "2: structure: source job 0000"]),
        ([{**video, "structure": {"line": 2}}, {**video, "cut_every": {"A": "bars"}}],
         ["1: structure: line 2 is not an earlier job line",
          "2: cut_every: section A: expected one of beat, bar, 2bars, 4bars, got 'bars'"]),
    ]:
        path.write_text("\n".join(json.dumps(x) for x in bad) + "\n")
        refused = run_cli("submit", str(path), "--project", "acme", env=env)
        assert refused.returncode == 2, refused.stderr
        for words in expected:
            assert words in refused.stderr, (words, refused.stderr)
    with Db(pg_url).sessions() as session:
        assert session.scalar(select(func.count()).select_from(Batch)) == before
    # the audio job's structure, by id, from a later batch: reused, not analysed again
    again = {**video, "structure": {"job": audio_job.id}, "fps": 24, "width": 64, "height": 64}
    path.write_text(json.dumps(again) + "\n")
    ok = run_cli("submit", str(path), "--project", "acme", "--json", env=env)
    assert ok.returncode == 0, ok.stderr
    later = json.loads(ok.stdout)["batch_id"]
    db = Db(pg_url)
    db.wait(later, workers, timeout=120)
    [job] = db.jobs(later)
    assert job.status == "succeeded", job.error
    assert {o.name for o in db.outputs(later)} == {"video.mp4", "cuts.json"}
    db.close()
    check_timeline_of(later, tmp_path / "edit", env)

    # refused on the worker, each naming why: a structure made from another track, and a track
    # too long for a video (at 60 fps, 51 s is 3,060 frames)
    store.put("acme/audio/other.wav", synth("AB", bars=2, bpm=120, seed=5).wav, "audio/wav")
    store.put("acme/audio/long.wav", silence(51.0), "audio/wav")
    wrong = [{**again, "audio": {"key": "audio/other.wav"}},
             {**video, "audio": {"key": "audio/long.wav"}, "structure": None, "fps": 60,
              "width": 32, "height": 32}]
    path.write_text("\n".join(json.dumps({k: v for k, v in x.items() if v is not None})
                              for x in wrong) + "\n")
    sent = run_cli("submit", str(path), "--project", "acme", "--json", env=env)
    assert sent.returncode == 0, sent.stderr
    refused = json.loads(sent.stdout)["batch_id"]
    db = Db(pg_url)
    db.wait(refused, workers, timeout=120)
    errors = [(j.status, j.error or "") for j in db.jobs(refused)]
    assert errors[0][0] == "failed" and "structure: made from acme/audio/song.wav" in errors[0][1]
    assert errors[1][0] == "failed" and "is 3060 frames; a video has at most 3000" in errors[1][1]
    db.close()
    other = run_cli("submit", str(path), "--project", "studio-b", env=env)
    assert other.returncode == 2 and "does not exist in this project" in other.stderr


def silence(seconds: float, rate: int = 8000) -> bytes:
    """A WAV of ``seconds`` of near silence (a faint hum, so it decodes to samples)."""
    t = np.arange(int(seconds * rate)) / rate
    return to_wav(np.sin(2 * np.pi * 110 * t) * (300 / 32767), rate)


def timecode(frames: int, fps: int) -> str:
    s, f = divmod(frames, fps)
    m, s = divmod(s, 60)
    return f"{m // 60:02d}:{m % 60:02d}:{s:02d}:{f:02d}"


def check_timeline_of(batch: str, folder: Path, env: dict[str, str]) -> None:
    """The batch (one beats video) pulled and exported: the EDL, read by pycmx, has one event
    per shot of the MP4 at its timecodes, and melt's render of the MLT file cuts on the frames
    genfarm's own MP4 cuts on (both found from the pictures)."""
    import os
    import shutil
    import subprocess

    import pycmx

    pulled = run_cli("pull", batch, str(folder), env=env)
    assert pulled.returncode == 0, pulled.stderr
    [mp4] = folder.glob("*/video.mp4")
    source, fps = frames_of(mp4.read_bytes())
    shots = cuts_in(source)
    for fmt in ("edl", "mlt"):
        made = run_cli("timeline", batch, "-o", str(folder / f"cut.{fmt}"), env=env)
        assert made.returncode == 0, made.stderr
    edl = pycmx.parse_cmx3600(io.StringIO((folder / "cut.edl").read_text()))
    edits = [e for ev in edl.events for e in ev.edits if e.channels.video]
    bounds = [0, *shots, len(source)]
    assert [(e.record_in, e.record_out) for e in edits] == [
        (timecode(a, int(fps)), timecode(b, int(fps))) for a, b in zip(bounds, bounds[1:], strict=False)]
    assert [(e.source_in, e.source_out) for e in edits] == [
        (e.record_in, e.record_out) for e in edits]  # the MP4's own frames, in order
    if shutil.which("melt") is None:
        return  # tests/services.sh installs it where it can
    render = subprocess.run(["melt", "-quiet", "cut.mlt", "-consumer", "avformat:render.mp4",
                             "vcodec=libx264", "crf=1", "preset=ultrafast", "an=1"],
                            cwd=folder, capture_output=True, text=True, timeout=180,
                            env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert render.returncode == 0, render.stderr[-2000:]
    rendered, rate = frames_of((folder / "render.mp4").read_bytes())
    assert rate == fps and len(rendered) == len(source), (rate, len(rendered), len(source))
    assert cuts_in(rendered) == shots, (cuts_in(rendered), shots)
    print(f"melt: {len(shots)} cuts, on the frames of genfarm's MP4")
