"""`genfarm timeline` and GET /v1/batches/{id}/timeline on batches made the real way: stills and
an orbit from a real worker (tiny aether), and beat-cut videos whose MP4, cuts.json and music
the test encodes itself (hard cuts at known frames) and records as the job's outputs through the
farm's own claim and record. Every format is read back by OpenTimelineIO (the EDL also by
pycmx, an independent parser) and the MLT file is rendered by melt: its cuts, found from the
rendered frames, fall on the source MP4's own cuts."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse
from xml.etree import ElementTree

import av
import numpy as np
import pytest
from fastapi.testclient import TestClient

from jobs.db import make_engine, session_factory, upgrade
from jobs.lifecycle import JobResult, OutputRecord, claim, record
from jobs.settings import Settings
from jobs.timeline import FORMATS, build_timeline, export, mp4_frames
from storage import open_storage
from tests.conftest import REDIS_URL, ROOT, Workers, create_pg_database, drop_pg_database, run_cli
from tests.helpers import Db, submit
from tests.music import to_wav

otio = pytest.importorskip("opentimelineio", reason="the timeline extra is not installed")
pycmx = pytest.importorskip("pycmx", reason="the dev extra is not installed")

W = H = 64
BEATS = [0.42, 1.0, 1.37, 2.05, 2.5]  # irregular on purpose: cuts are not a fixed stride
DOWNBEATS = [0.42, 2.05]  # one bar: 1.63 s
SECTIONS = [(0.0, 1.37, "A"), (1.37, 3.0, "B")]
SECONDS = 3.0
PALETTE = [(220, 40, 40), (40, 200, 60), (50, 60, 220), (230, 220, 50), (20, 20, 20),
           (200, 200, 200)]
ORBIT_FPS, ORBIT_FRAMES = 25, 30


def first_frame(t: float, fps: int) -> int:
    """The frame nearest ``t``: where a beats video cuts, and its marker sits."""
    return round(t * fps)


def tc(frames: int, fps: int) -> str:
    s, f = divmod(frames, fps)
    m, s = divmod(s, 60)
    h, m = divmod(m, 60)
    return f"{h:02d}:{m:02d}:{s:02d}:{f:02d}"


def click_track(rate: int = 22050) -> bytes:
    t = np.arange(int(SECONDS * rate)) / rate
    signal = np.zeros_like(t)
    for c in BEATS:
        burst = (t >= c) & (t < c + 0.015)
        signal[burst] = np.sin(2 * np.pi * 2000 * t[burst])
    return to_wav(signal * (30000 / 32767), rate)


@dataclass
class BeatCut:
    """A beat-cut video as the beats mode makes one: frames, its segments and its sidecar."""

    fps: int
    frames: int = 0
    cuts: list[int] = field(default_factory=list)  # first frame of each segment after the 1st
    mp4: bytes = b""
    sidecar: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def make(cls, fps: int, seed: int, audio_key: str) -> BeatCut:
        frames = math.ceil(SECONDS * fps)
        cuts = [first_frame(b, fps) for b in BEATS]
        bounds = [0, *cuts, frames]
        pictures = []
        for s in range(len(bounds) - 1):
            for i in range(bounds[s], bounds[s + 1]):
                f = np.zeros((H, W, 3), np.uint8)
                f[:] = PALETTE[s]
                f[:, (i * 2) % W] = 255 - np.array(PALETTE[s])  # a moving line: frames differ
                pictures.append(f)
        buf = io.BytesIO()
        with av.open(buf, "w", format="mp4") as c:
            st = c.add_stream("libx264", rate=fps)
            st.width, st.height, st.pix_fmt = W, H, "yuv420p"
            st.options = {"crf": "4", "g": "12"}
            for f in pictures:
                for p in st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    c.mux(p)
            for p in st.encode():
                c.mux(p)

        def section(t: float) -> tuple[int, str]:
            return next((i, lab) for i, (a, b, lab) in enumerate(SECTIONS) if a <= t < b)

        segments = []
        for i in range(len(bounds) - 1):
            start = bounds[i] / fps
            k, label = section(start)
            segments.append({"index": i, "start_frame": bounds[i], "end_frame": bounds[i + 1],
                             "start": start, "end": bounds[i + 1] / fps,
                             "beat": BEATS[i - 1] if i else None, "section": label,
                             "section_index": k, "seed": seed + i, "yaw": 30.0})
        sidecar = {"version": 1, "fps": fps, "frames": frames, "width": W, "height": H,
                   "audio": {"key": audio_key, "sha256": None}, "segments": segments,
                   "sections": [{"start": a, "end": b, "label": lab} for a, b, lab in SECTIONS],
                   "beats": BEATS, "downbeats": DOWNBEATS}
        return cls(fps, frames, cuts, buf.getvalue(), sidecar)

    @property
    def bar(self) -> int:
        return round((DOWNBEATS[1] - DOWNBEATS[0]) * self.fps)


@dataclass
class Farm:
    env: dict[str, str]
    db_url: str
    storage_url: str
    root: Path
    real: str = ""  # batch: 3 stills and an orbit from the worker
    beats: dict[int, str] = field(default_factory=dict)  # fps -> batch: a still + a beat cut
    made: dict[int, BeatCut] = field(default_factory=dict)
    wav: bytes = b""


def _record_beat_cut(farm: Farm, store: Any, batch_id: str, fps: int) -> None:
    """Claim the batch's beats job before any worker runs and record what the test encoded as
    its outputs, through the farm's own claim and record."""
    sessions = session_factory(make_engine(farm.db_url))
    owner = f"test-fixture:{uuid.uuid4().hex[:8]}"
    with sessions.begin() as s:
        from jobs.models import Job

        job = s.query(Job).filter(Job.batch_id == batch_id, Job.kind == "video").one()
        assert claim(s, [job.id], owner, 600), "the beats job was not claimable"
        made = BeatCut.make(fps, int(job.params["seed"]), job.params["audio"]["key"])
        outs = []
        for name, data, ctype in (("video.mp4", made.mp4, "video/mp4"),
                                  ("cuts.json", json.dumps(made.sidecar).encode(),
                                   "application/json")):
            obj = store.put(store.job_key("acme", batch_id, job.id, name), data, ctype)
            outs.append(OutputRecord(name, obj.key, obj.sha256, obj.bytes, obj.content_type))
        done, _, _ = record(s, owner, [JobResult(job.id, outs, device_seconds=0.1)])
        assert done == {job.id}
    sessions.kw["bind"].dispose()
    farm.made[fps] = made


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory, pg_server: str) -> Any:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"Redis is not reachable ({exc}); run tests/services.sh")
    redis.Redis.from_url(REDIS_URL).flushdb()
    root = tmp_path_factory.mktemp("timeline")
    db_url = create_pg_database(pg_server)
    upgrade(db_url)
    storage_url = (root / "store").as_uri()
    env = {"GENFARM_DATABASE_URL": db_url, "GENFARM_BROKER_URL": REDIS_URL,
           "GENFARM_STORAGE_URL": storage_url, "GENFARM_MODEL_PROFILE": "tiny",
           "GENFARM_DATA_DIR": str(root / "data")}
    f = Farm(env, db_url, storage_url, root, wav=click_track())
    store = open_storage(storage_url)
    store.put("acme/audio/clicks.wav", f.wav, "audio/wav")
    f.real = submit(env, root, {"kind": "generate", "seed": [11, 12], "width": W, "height": H},
                    {"kind": "generate", "seed": 40, "width": W, "height": H, "yaw": 20},
                    {"kind": "video", "mode": "orbit", "source": {"line": 2},
                     "frames": ORBIT_FRAMES, "fps": ORBIT_FPS, "width": W, "height": H,
                     "chunk_frames": 16})
    for fps, seed in ((24, 500), (30, 700)):
        f.beats[fps] = submit(
            env, root, {"kind": "generate", "seed": seed + 90, "width": W, "height": H},
            {"kind": "video", "mode": "beats", "seed": seed, "fps": fps, "width": W,
             "height": H, "audio": {"key": "audio/clicks.wav"}, "on_beat": "cut"})
        _record_beat_cut(f, store, f.beats[fps], fps)
    workers = Workers(root)
    db = Db(db_url)
    try:
        workers.start(env, "--max-batch", "8")
        for batch in (f.real, *f.beats.values()):
            db.wait(batch, workers, timeout=240)
            assert set(db.counts(batch)) == {"succeeded"}, db.counts(batch)
    finally:
        workers.close()
        db.close()
    yield f
    drop_pg_database(pg_server, db_url)


def timeline_of(farm: Farm, batch: str, **kw: Any) -> Any:
    sessions = session_factory(make_engine(farm.db_url))
    with sessions() as s:
        made = build_timeline(s, open_storage(farm.storage_url), batch, **kw)
    sessions.kw["bind"].dispose()
    return made


def clips_of(track: Any) -> list[tuple[str, int, int]]:
    """(name, first source frame, frames) of each clip, times as whole frames at their rate."""
    out = []
    for c in track.find_clips():
        r = c.source_range or c.trimmed_range()
        assert r.start_time.value == int(r.start_time.value), (c.name, r)
        assert r.duration.value == int(r.duration.value), (c.name, r)
        out.append((c.name, int(r.start_time.value), int(r.duration.value)))
    return out


def markers_of(track: Any) -> list[tuple[str, int]]:
    return [(m.name.lower(), int(m.marked_range.start_time.value))
            for c in track.find_clips() for m in c.markers]


# -- what the timeline holds ------------------------------------------------------------------
def test_real_batch_stills_and_orbit_in_job_order(farm: Farm) -> None:
    made = timeline_of(farm, farm.real)
    video, = [t for t in made.tracks if t.kind == otio.schema.TrackKind.Video]
    assert not [t for t in made.tracks if t.kind == otio.schema.TrackKind.Audio]
    still = 2 * ORBIT_FPS  # 2 s at the batch's video rate
    assert clips_of(video) == [("#0 generate seed 11", 0, still), ("#1 generate seed 12", 0, still),
                               ("#2 generate seed 40", 0, still),
                               ("#3 video orbit seed 40", 0, ORBIT_FRAMES)]
    assert made.duration() == otio.opentime.RationalTime(3 * still + ORBIT_FRAMES, ORBIT_FPS)
    jobs = Db(farm.db_url)
    try:
        by_index = {j.index: j for j in jobs.jobs(farm.real)}
        outputs = {o.job_id: o for o in jobs.outputs(farm.real)}
    finally:
        jobs.close()
    for clip in video.find_clips():
        meta = clip.metadata["genfarm"]
        job = by_index[meta["index"]]
        assert meta["job_id"] == job.id and meta["sha256"] == outputs[job.id].sha256
        assert dict(meta["params"]) == job.params
        assert clip.media_reference.target_url == (
            f"{job.index:06d}-{job.id}/{outputs[job.id].name}")
    short = timeline_of(farm, farm.real, still_seconds=0.4)  # 10 frames at 25 fps
    assert [d for _, _, d in clips_of(short.tracks[0])] == [10, 10, 10, ORBIT_FRAMES]


@pytest.mark.parametrize("fps", [24, 30])
def test_beat_cut_video_is_one_clip_per_segment_with_music_and_markers(farm: Farm,
                                                                       fps: int) -> None:
    made = timeline_of(farm, farm.beats[fps])
    cut = farm.made[fps]
    assert made.global_start_time.rate == fps
    video, audio = made.tracks
    bounds = [0, *cut.cuts, cut.frames]
    expected = [(f"#0 generate seed {590 if fps == 24 else 790}", 0, cut.bar)]  # one bar
    base = 500 if fps == 24 else 700
    for i in range(len(bounds) - 1):
        label = cut.sidecar["segments"][i]["section"]
        expected.append((f"#1.{i:02d} video beats seed {base + i} {label}", bounds[i],
                         bounds[i + 1] - bounds[i]))
    assert clips_of(video) == expected
    assert all(c.media_reference.target_url.endswith("/video.mp4")
               for c in list(video.find_clips())[1:])
    # the music: from the video's first record frame, as long as the video, on its own track
    assert audio.kind == otio.schema.TrackKind.Audio
    gap, music = audio
    assert isinstance(gap, otio.schema.Gap) and gap.duration().value == cut.bar
    assert music.media_reference.target_url == "sources/audio/clicks.wav"
    assert (music.source_range.start_time.value, music.duration().value) == (0, cut.frames)
    # markers: section starts, bars on downbeats, the other beats; each on the clip showing it
    want = [("a", 0), ("b", first_frame(1.37, fps))]
    want += [(f"bar {n}", first_frame(t, fps)) for n, t in enumerate(DOWNBEATS, 1)]
    want += [("beat", first_frame(t, fps)) for t in BEATS if t not in DOWNBEATS]
    assert sorted(markers_of(video)) == sorted(want)
    for clip in list(video.find_clips())[1:]:
        for m in clip.markers:
            assert clip.source_range.contains(m.marked_range.start_time)
        seg = clip.metadata["genfarm"]["segment"]
        assert (seg["start_frame"], seg["end_frame"]) == (
            clip.source_range.start_time.value, clip.source_range.end_time_exclusive().value)


def test_mp4_header_gives_frames_and_rate(farm: Farm) -> None:
    for fps, cut in farm.made.items():
        with av.open(io.BytesIO(cut.mp4), "r") as c:
            decoded = len(list(c.decode(video=0)))
        assert mp4_frames(cut.mp4) == (decoded, fps) == (cut.frames, fps)


# -- every format, read back ---------------------------------------------------------------------
@pytest.mark.parametrize("fmt", [f for f, spec in FORMATS.items() if spec.readable])
def test_each_format_reads_back_with_the_same_clips(farm: Farm, fmt: str, tmp_path: Path) -> None:
    spec = FORMATS[fmt]
    for batch in (farm.real, *farm.beats.values()):
        made = timeline_of(farm, batch)
        rate = made.global_start_time.rate
        path = tmp_path / f"{batch}{spec.suffix}"
        path.write_bytes(export(made, fmt))
        kw = {"rate": rate} if fmt == "edl" else {}
        back = otio.adapters.read_from_file(str(path), adapter_name=spec.adapter, **kw)
        for kind in (otio.schema.TrackKind.Video, otio.schema.TrackKind.Audio):
            ours = [t for t in made.tracks if t.kind == kind]
            theirs = [t for t in back.tracks if t.kind == kind]
            if fmt == "edl" and kind == otio.schema.TrackKind.Audio:
                continue  # the CMX adapter writes the video track only
            assert len(theirs) == len(ours), (fmt, kind)
            for a, b in zip(ours, theirs, strict=True):
                assert clips_of(b) == clips_of(a), (fmt, batch)
                assert {c.duration().rate for c in b.find_clips()} <= {rate}
                if fmt != "aaf":  # the AAF adapter writes no markers
                    assert sorted(markers_of(b)) == sorted(markers_of(a)), fmt
        if fmt == "otio":
            assert back.to_json_string() == made.to_json_string()  # metadata and all
        if fmt == "aaf":  # each clip's comments carry its job and sha256
            for clip in back.tracks[0].find_clips():
                comments = clip.metadata["AAF"]["UserComments"]
                assert comments["sha256"] and comments["job"].startswith("#")


@pytest.mark.parametrize("fps", [24, 25, 30])
def test_edl_read_by_pycmx_has_every_event_at_its_timecodes(farm: Farm, fps: int) -> None:
    batch = farm.real if fps == ORBIT_FPS else farm.beats[fps]
    text = export(timeline_of(farm, batch), "edl").decode()
    edl = pycmx.parse_cmx3600(io.StringIO(text))
    edits = [e for ev in edl.events for e in ev.edits]
    if fps == ORBIT_FPS:
        still = 2 * fps
        want = [(0, still)] * 3 + [(0, ORBIT_FRAMES)]
    else:
        cut = farm.made[fps]
        bounds = [0, *cut.cuts, cut.frames]
        want = [(0, cut.bar)] + [(a, b - a) for a, b in zip(bounds, bounds[1:], strict=False)]
    assert len(edits) == len(want)
    at = 0
    for n, (edit, (src, length)) in enumerate(zip(edits, want, strict=True)):
        assert edit.channels.video, n
        assert (edit.source_in, edit.source_out) == (tc(src, fps), tc(src + length, fps)), n
        assert (edit.record_in, edit.record_out) == (tc(at, fps), tc(at + length, fps)), n
        job_index = n if fps == ORBIT_FPS else min(n, 1)  # every segment is job 1's
        assert edit.source == f"J{job_index:07d}", n  # the reel: the job
        assert edit.clip_name and edit.clip_name.startswith("#")
        at += length
    assert "FCM: NON-DROP FRAME" in text.splitlines()[:3]
    assert not list(edl.unrecognized_statements), list(edl.unrecognized_statements)


# -- a pulled folder opens as is ------------------------------------------------------------------
def _pull(farm: Farm, batch: str, dest: Path) -> None:
    result = run_cli("pull", batch, str(dest), env=farm.env)
    assert result.returncode == 0, result.stderr


def _referenced(path: Path, fmt: str) -> list[str]:
    """The media a written timeline points at, read the way its reader reads them."""
    if fmt == "mlt":
        root = ElementTree.parse(path).getroot()
        return [p.text or "" for p in root.iter("property") if p.get("name") == "resource"
                and p.text not in ("black",)]
    spec = FORMATS[fmt]
    kw = {"rate": 24} if fmt == "edl" else {}
    back = otio.adapters.read_from_file(str(path), adapter_name=spec.adapter, **kw)
    return [c.media_reference.target_url for c in back.find_clips()]


def test_relative_paths_match_the_pulled_layout(farm: Farm, tmp_path: Path) -> None:
    for batch in (farm.real, farm.beats[24]):
        folder = tmp_path / batch
        _pull(farm, batch, folder)
        for fmt, spec in FORMATS.items():
            out = folder / f"cut{spec.suffix}"
            result = run_cli("timeline", batch[:10], "-o", str(out), env=farm.env)
            assert result.returncode == 0, result.stderr
            assert f"{fmt}:" in result.stdout
            targets = _referenced(out, fmt)
            assert targets, fmt
            for target in targets:
                if fmt == "aaf":  # its reader makes every locator a file:// URL
                    target = target.removeprefix("file://")
                assert not os.path.isabs(target) and "://" not in target, (fmt, target)
                assert (folder / target).is_file(), (fmt, target)
    wav = tmp_path / farm.beats[24] / "sources" / "audio" / "clicks.wav"
    assert wav.read_bytes() == farm.wav  # `genfarm pull` fetched the music the video used
    again = run_cli("pull", farm.beats[24], str(tmp_path / "bare"), "--no-sources", env=farm.env)
    assert again.returncode == 0 and not (tmp_path / "bare" / "sources").exists()


def test_url_and_absolute_media(farm: Farm, tmp_path: Path) -> None:
    store = open_storage(farm.storage_url)
    batch = farm.beats[30]
    out = tmp_path / "cut.otio"
    result = run_cli("timeline", batch, "-o", str(out), "--media", "url", env=farm.env)
    assert result.returncode == 0, result.stderr
    urls = {c.media_reference.target_url for c in otio.adapters.read_from_file(str(out))
            .find_clips()}
    assert len(urls) == 3  # the still, the MP4 (every segment), the music
    for url in urls:
        parsed = urlparse(url)
        assert parsed.scheme == "file"
        path = Path(unquote(parsed.path))
        assert path.is_relative_to(Path(store.root)) and path.is_file(), url  # type: ignore[attr-defined]
    folder = tmp_path / "pulled"
    _pull(farm, batch, folder)
    fcpx = folder / "cut.fcpxml"
    result = run_cli("timeline", batch, "-o", str(fcpx), "--media", "absolute", env=farm.env)
    assert result.returncode == 0, result.stderr
    srcs = [a.get("src") or "" for a in ElementTree.parse(fcpx).getroot().iter("asset")]
    assert srcs and all(urlparse(s).scheme == "file" and Path(unquote(urlparse(s).path))
                        .is_relative_to(folder.resolve()) and Path(unquote(urlparse(s).path))
                        .is_file() for s in srcs), srcs
    fmt_el = next(ElementTree.parse(fcpx).getroot().iter("format"))
    assert (fmt_el.get("width"), fmt_el.get("height")) == (str(W), str(H))
    assert Fraction((fmt_el.get("frameDuration") or "").removesuffix("s")) == Fraction(1, 30)


# -- melt renders the MLT file: its cuts are the source's ---------------------------------------
def _frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24").astype(np.int16) for f in c.decode(video=0)]


def _cuts(frames: list[np.ndarray], threshold: float = 25.0) -> list[int]:
    """Frames that differ from the one before by more than ``threshold`` (mean absolute)."""
    return [i for i in range(1, len(frames))
            if float(np.abs(frames[i] - frames[i - 1]).mean()) > threshold]


@pytest.mark.skipif(shutil.which("melt") is None, reason="melt is not installed")
def test_melt_renders_the_cuts_on_the_source_frames(farm: Farm, tmp_path: Path) -> None:
    batch = farm.beats[24]
    cut = farm.made[24]
    folder = tmp_path / "pulled"
    _pull(farm, batch, folder)
    result = run_cli("timeline", batch, "-o", str(folder / "cut.mlt"), env=farm.env)
    assert result.returncode == 0, result.stderr
    render = subprocess.run(["melt", "-quiet", "cut.mlt", "-consumer", "avformat:render.mp4",
                             "vcodec=libx264", "crf=1", "preset=ultrafast", "an=1"],
                            cwd=folder, capture_output=True, text=True, timeout=180,
                            env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert render.returncode == 0, render.stderr[-2000:]
    rendered = _frames(folder / "render.mp4")
    source = _frames(next(folder.glob("000001-*/video.mp4")))
    assert len(source) == cut.frames
    assert len(rendered) == cut.bar + cut.frames, (len(rendered), cut.bar, cut.frames)
    source_cuts = _cuts(source)
    assert source_cuts == cut.cuts  # the fixture's own cuts, seen in its frames
    in_video = [i - cut.bar for i in _cuts(rendered) if i > cut.bar]
    assert in_video == source_cuts, (in_video, source_cuts)
    # and frame for frame: every rendered video frame is the source frame of that number
    diff = [float(np.abs(rendered[cut.bar + i] - source[i]).mean()) for i in range(cut.frames)]
    print(f"melt: {len(in_video)} cuts on frames {in_video} (source {source_cuts}); "
          f"worst frame difference {max(diff):.2f}/255")
    assert max(diff) < 3.0, diff


# -- the API --------------------------------------------------------------------------------
def test_api_timeline_formats_isolation_and_errors(farm: Farm, tmp_path: Path) -> None:
    from api.app import create_app
    from jobs.tokens import create_token

    cfg = Settings(database_url=farm.db_url, broker_url=REDIS_URL, data_dir=tmp_path / "data",
                   storage_url=farm.storage_url, api_rate_per_minute=6000, api_rate_burst=1000)
    app = create_app(cfg)
    with app.state.sessions.begin() as s:
        ours = create_token(s, "acme", "tests").token
        theirs = create_token(s, "rival", "tests").token
    client = TestClient(app)
    batch = farm.beats[24]
    want = clips_of(timeline_of(farm, batch).tracks[0])
    for fmt, spec in FORMATS.items():
        r = client.get(f"/v1/batches/{batch}/timeline", params={"format": fmt},
                       headers={"Authorization": f"Bearer {ours}"})
        assert r.status_code == 200, (fmt, r.text)
        assert r.headers["content-type"].split(";")[0] == spec.content_type.split(";")[0]
        disposition = r.headers["content-disposition"]
        assert disposition.startswith("attachment; filename=") and \
            disposition.endswith(f'{batch[:12]}{spec.suffix}"'), disposition
        if spec.readable:
            path = tmp_path / f"api{spec.suffix}"
            path.write_bytes(r.content)
            kw = {"rate": 24} if fmt == "edl" else {}
            back = otio.adapters.read_from_file(str(path), adapter_name=spec.adapter, **kw)
            assert clips_of(back.video_tracks()[0]) == want, fmt
        else:
            assert b"<mlt" in r.content
    other = client.get(f"/v1/batches/{batch}/timeline", headers={"Authorization": f"Bearer {theirs}"})
    missing = client.get(f"/v1/batches/{uuid.uuid4().hex}/timeline",
                         headers={"Authorization": f"Bearer {theirs}"})
    assert other.status_code == missing.status_code == 404
    assert other.json()["detail"] == missing.json()["detail"]  # says nothing about its existence
    bad = client.get(f"/v1/batches/{batch}/timeline", params={"format": "prproj"},
                     headers={"Authorization": f"Bearer {ours}"})
    assert bad.status_code == 422
    assert client.get(f"/v1/batches/{batch}/timeline").status_code == 401


# -- the CLI's errors -------------------------------------------------------------------------
def test_cli_names_what_is_missing(farm: Farm, tmp_path: Path) -> None:
    unknown = run_cli("timeline", farm.real, "-o", str(tmp_path / "cut.prproj"), env=farm.env)
    assert unknown.returncode != 0 and "--format" in unknown.stderr
    assert not (tmp_path / "cut.prproj").exists()
    # without OpenTimelineIO (the timeline extra): one line that says what to install
    code = ("import sys; sys.modules['opentimelineio'] = None; from cli.main import main; "
            f"sys.argv = ['genfarm', 'timeline', {farm.real!r}, '-o', {str(tmp_path / 'x.otio')!r}]; "
            "main()")
    bare = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **farm.env}, cwd=ROOT, timeout=120)
    assert bare.returncode != 0
    assert "pip install 'genfarm[timeline]'" in bare.stderr and "Traceback" not in bare.stderr
    # every format written by the CLI, and the API's route imported, without torch
    code = ("import sys; from click.testing import CliRunner; from cli.main import cli; "
            "import api.routes.timeline\n"
            f"for ext in {[f.suffix for f in FORMATS.values()]!r}:\n"
            f"    r = CliRunner().invoke(cli, ['timeline', {farm.beats[24]!r}, '-o', "
            f"{str(tmp_path)!r} + '/t' + ext])\n"
            "    assert r.exit_code == 0, r.output\n"
            "assert not [m for m in sys.modules if m.split('.')[0] == 'torch']\nprint('ok')")
    clean = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, **farm.env}, cwd=ROOT, timeout=120)
    assert clean.returncode == 0 and "ok" in clean.stdout, clean.stderr[-2000:]
    help_text = run_cli("timeline", "--help").stdout
    for editor in ("Resolve", "Premiere", "Final Cut", "Avid", "Shotcut", "Kdenlive", "melt"):
        assert editor in help_text, editor


def test_a_batch_with_nothing_to_place_is_refused_in_every_format(farm: Farm,
                                                                  tmp_path: Path) -> None:
    """Every job cancelled before it ran: no image or video to put on a timeline. Each format
    says so (naming what was left out) instead of writing an empty or broken file."""
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"kind": "generate", "seed": 3, "width": 32, "height": 32}) + "\n")
    made = run_cli("submit", str(path), "--project", "acme", "--json", env=farm.env)
    assert made.returncode == 0, made.stderr
    batch = json.loads(made.stdout)["batch_id"]
    assert run_cli("cancel", batch, env=farm.env).returncode == 0
    for fmt, out in FORMATS.items():
        refused = run_cli("timeline", batch, "-o", str(tmp_path / f"t{out.suffix}"), env=farm.env)
        assert refused.returncode != 0, (fmt, refused.stdout)
        assert "has no images or videos to place" in refused.stderr, (fmt, refused.stderr)
        assert "cancelled" in refused.stderr and "Traceback" not in refused.stderr, fmt
        assert not (tmp_path / f"t{out.suffix}").exists(), fmt
