"""The audio analysis against music whose structure is known (tests/music.py): beats, downbeats,
the tempo map through a tempo change, sections and their labels; then the audio kind's worker
and the cut grid a beats video takes from a structure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.families import context, family, scratch
from tests.music import Track, synth
from workers.audio import analyse
from workers.families.aether.cuts import grid, segments

# measured on these tracks (benchmarks/audio.py): median 1.5 to 3 ms, max 8 ms
MEDIAN_BEAT_MS = 5.0
MAX_BEAT_MS = 15.0
DOWNBEAT_WINDOW_S = 0.07


def beat_errors(track: Track, found: list[float]) -> np.ndarray:
    """For each true beat, the distance (s) to the nearest beat found."""
    got = np.asarray(found)
    return np.array([np.abs(got - t).min() for t in track.beats])


def downbeat_accuracy(track: Track, found: list[float]) -> float:
    got = np.asarray(found)
    return float(np.mean([np.abs(got - t).min() <= DOWNBEAT_WINDOW_S for t in track.downbeats]))


@pytest.fixture(scope="module")
def aba() -> tuple[Track, dict]:
    """A B A, 8 bars each, 120 bpm then 150 from the middle of B."""
    track = synth("ABA", bars=8, bpm=120, change_bpm=150, seed=0)
    return track, analyse(track.samples, track.rate)


def test_beats_land_on_the_true_grid_through_a_tempo_change(aba: tuple[Track, dict]) -> None:
    track, found = aba
    errors = beat_errors(track, found["beats"]) * 1000
    assert len(found["beats"]) == len(track.beats)  # none missed, none added
    assert np.median(errors) <= MEDIAN_BEAT_MS, np.median(errors)
    assert errors.max() <= MAX_BEAT_MS, (errors.max(), int(errors.argmax()))


def test_downbeats_are_the_kicks(aba: tuple[Track, dict]) -> None:
    track, found = aba
    assert found["meter"] == 4
    assert downbeat_accuracy(track, found["downbeats"]) >= 0.95
    assert len(found["bars"]) == len(found["downbeats"])
    assert [b["start"] for b in found["bars"]] == found["downbeats"]
    assert all(b["end"] > b["start"] for b in found["bars"])


def test_the_tempo_map_steps_where_the_tempo_changes(aba: tuple[Track, dict]) -> None:
    track, found = aba
    tempo = found["tempo"]
    assert len(tempo) == 2, tempo  # one entry per tempo, one change
    assert tempo[0]["start"] == 0.0 and abs(tempo[0]["bpm"] - 120) < 1.5
    assert abs(tempo[1]["bpm"] - 150) < 1.5
    beat = 60 / 150
    assert abs(tempo[1]["start"] - track.tempo_change) <= 2 * beat, (tempo, track.tempo_change)


def test_sections_fall_on_bars_and_repeat_their_labels(aba: tuple[Track, dict]) -> None:
    track, found = aba
    sections = found["sections"]
    assert [s["label"] for s in sections] == ["A", "B", "A"], sections
    assert sections[0]["start"] == 0.0 and sections[-1]["end"] == found["duration"]
    starts = [b["start"] for b in found["bars"]]
    for truth, sec in zip(track.boundaries(), sections[1:], strict=True):
        bar = next(b - a for a, b in track.bars if a <= truth < b)
        assert abs(sec["start"] - truth) < bar, (sec, truth)
        assert sec["start"] in starts  # snapped to a bar start


def test_the_structure_is_json_and_deterministic(aba: tuple[Track, dict]) -> None:
    track, found = aba
    assert found["version"] == 1 and found["rate"] == track.rate
    assert abs(found["duration"] - track.duration) < 1e-3
    energy = found["energy"]
    assert 0.05 < energy["hop"] < 0.2
    assert len(energy["values"]) == pytest.approx(track.duration / energy["hop"], abs=2)
    assert min(energy["values"]) >= 0 and max(energy["values"]) == 1.0
    assert json.loads(json.dumps(found)) == found
    assert analyse(track.samples, track.rate) == found


@pytest.mark.parametrize("form,bars,bpm,change_bpm,labels", [
    ("ABAB", 6, 90, 110, ["A", "B", "A", "B"]),
    ("ABCA", [4, 8, 4, 4], 110, 140, ["A", "B", "C", "A"]),
    ("AAA", 6, 120, 150, ["A"]),  # one sound throughout: one section, whatever the tempo does
])
def test_other_forms(form: str, bars: int | list[int], bpm: float, change_bpm: float,
                     labels: list[str]) -> None:
    track = synth(form, bars=bars, bpm=bpm, change_bpm=change_bpm, seed=4)
    found = analyse(track.samples, track.rate)
    assert [s["label"] for s in found["sections"]] == labels
    assert np.median(beat_errors(track, found["beats"])) * 1000 <= MEDIAN_BEAT_MS
    assert downbeat_accuracy(track, found["downbeats"]) >= 0.95
    assert [round(t["bpm"]) for t in found["tempo"]] == [bpm, change_bpm]


def test_resampled_input_gives_the_same_grid() -> None:
    track = synth("ABA", bars=4, seed=2, rate=44100)
    found = analyse(track.samples, track.rate)
    assert found["rate"] == 44100
    assert beat_errors(track, found["beats"]).max() * 1000 <= MAX_BEAT_MS


def test_silence_and_a_tiny_file_have_no_beats() -> None:
    quiet = analyse(np.zeros(22050 * 3, dtype=np.float32), 22050)
    assert quiet["beats"] == [] and quiet["bars"] == [] and quiet["tempo"] == []
    assert quiet["sections"] == [{"start": 0.0, "end": 3.0, "label": "A"}]
    tiny = analyse(np.zeros(100, dtype=np.float32), 22050)
    assert tiny["beats"] == [] and len(tiny["sections"]) == 1
    with pytest.raises(ValueError, match="meter"):
        analyse(np.zeros(100, dtype=np.float32), 22050, meter=0)


def test_the_audio_kind_stores_structure_json() -> None:
    track = synth("ABA", bars=4, seed=1)
    store = scratch()
    store.put("p/in/track.wav", track.wav, "audio/wav")
    fam = family(model="audio")
    jobs = [{"model": "audio", "audio": {"key": "p/in/track.wav"}, "meter": 4},
            {"model": "audio", "audio": {"key": "p/in/track.wav"}, "meter": 1}]
    done = fam.run([context("audio", j, i, storage=store) for i, j in enumerate(jobs)])
    [[four], [one]] = done
    assert four.name == "structure.json" and four.content_type == "application/json"
    body = json.loads(four.encode())
    assert [s["label"] for s in body["sections"]] == ["A", "B", "A"]
    assert body["provenance"]["kind"] == "audio" and body["provenance"]["job_id"] == "j0"
    assert json.loads(four.metadata["genfarm-provenance"])["model"] == "audio"
    ones = json.loads(one.encode())
    assert ones["meter"] == 1 and ones["downbeats"] == ones["beats"]
    store.put("p/in/broken.wav", b"RIFF not really a wave file", "audio/wav")
    [failed] = fam.run([context("audio", {**jobs[0], "audio": {"key": "p/in/broken.wav"}},
                                storage=store)])
    assert "cannot be decoded" in str(failed)


# -- the cut grid of a beats video ---------------------------------------------------------
STRUCTURE = {
    "duration": 6.0,
    "beats": [0.26, 0.76, 1.26, 1.76, 2.26, 2.76, 3.26, 3.76, 4.26, 4.5, 4.76, 5.26, 5.76],
    "downbeats": [0.26, 2.26, 4.26],
    "sections": [{"start": 0.0, "end": 4.26, "label": "A"},
                 {"start": 4.26, "end": 6.0, "label": "B"}],
}


def test_cuts_follow_the_rule_of_each_section() -> None:
    times = [t for t, _ in grid(STRUCTURE, {"A": "bar", "B": "beat"})]
    assert times == [0.26, 2.26, 4.26, 4.5, 4.76, 5.26, 5.76]
    assert [t for t, _ in grid(STRUCTURE, "2bars")] == [0.26, 4.26]  # and every section start
    assert len(grid(STRUCTURE, None)) == len(STRUCTURE["beats"])


def test_each_cut_lands_on_the_nearest_frame_and_keeps_its_section_look() -> None:
    params = {"cut_every": {"A": "bar", "B": "beat"}, "yaw": 10.0, "fps": 24, "width": 64,
              "height": 64}
    segs = segments(STRUCTURE, 24, 144, params, seed=500)
    # 0.26 s is frame 6.24 -> 6 (a first-frame-after rule would take 7); 4.76 -> 114.24 -> 114
    assert [s["start_frame"] for s in segs] == [0, 6, 54, 102, 108, 114, 126, 138]
    assert segs[-1]["end_frame"] == 144 and all(
        a["end_frame"] == b["start_frame"] for a, b in zip(segs, segs[1:], strict=False))
    assert [s["section"] for s in segs] == ["A", "A", "A", "B", "B", "B", "B", "B"]
    assert {s["seed"] for s in segs if s["section"] == "A"} == {500}
    assert {s["seed"] for s in segs if s["section"] == "B"} == {501}
    assert [s["yaw"] for s in segs[:4]] == [10.0, 45.0, 80.0, 10.0]  # each section starts alike
    assert segs[0]["beat"] is None and segs[1]["beat"] == 0.26
    cut = segments(STRUCTURE, 24, 144, {**params, "look": "cut"}, seed=500)
    assert [s["seed"] for s in cut] == list(range(500, 508)) and {s["yaw"] for s in cut} == {10.0}
    # at 2 fps, beats 4.26 and 4.5 land on the same frame (9): one cut; 5.76 is past the end
    low = segments(STRUCTURE, 2, 12, params, seed=0)
    assert [s["start_frame"] for s in low] == [0, 1, 5, 9, 10, 11]


# -- manifests: a video takes the structure of an audio line ----------------------------------
AUDIO_LINE = {"kind": "audio", "audio": {"key": "in/song.wav"}}
BEATS = {"kind": "video", "mode": "beats", "seed": 1, "audio": {"key": "in/song.wav"}}


def manifest(*lines: dict) -> str:
    return "\n".join(json.dumps(line) for line in lines)


def test_a_video_waits_for_the_audio_line_it_takes_its_structure_from() -> None:
    from jobs.manifest import parse_manifest

    specs = parse_manifest(manifest(AUDIO_LINE, {**BEATS, "structure": {"line": 1},
                                                  "cut_every": {"A": "bar", "B": "2bars"}}))
    audio, video = specs
    assert audio.params["model"] == "audio" and audio.params["meter"] == 4
    assert video.after == (1,)  # waits for the audio job, as with "after": 1
    assert video.refs == (("structure", 0),)  # given the audio job's id at insert
    assert video.params["cut_every"] == {"A": "bar", "B": "2bars"}


def test_structure_and_cut_mistakes_name_line_and_field() -> None:
    from jobs.errors import ManifestError
    from jobs.manifest import parse_manifest

    generate = {"kind": "generate", "seed": 1}
    with pytest.raises(ManifestError) as info:
        parse_manifest(manifest(
            generate, {**AUDIO_LINE, "meter": [3, 4]},
            {**BEATS, "structure": {"line": 1}},  # a generate line
            {**BEATS, "structure": {"line": 2}},  # two audio jobs
            {**BEATS, "structure": {"key": "in/structure.json"}},
            {**BEATS, "cut_every": "bars"},
            {**BEATS, "cut_every": {"A": "beat", "B": 2}},
            {"kind": "video", "mode": "orbit", "seed": 1, "look": "cut"},
            {**BEATS, "look": "shot"}))
    found = {(e.line, e.field): e.message for e in info.value.errors}
    assert "holds 1 generate job(s); this takes the structure.json of one audio job" in found[
        3, "structure"]
    assert "holds 2 audio job(s)" in found[4, "structure"]
    assert "give {\"line\": N} or {\"job\": ID}" in found[5, "structure"]
    assert "expected one of beat, bar, 2bars, 4bars" in found[6, "cut_every"]
    assert "section B: expected one of beat, bar, 2bars, 4bars, got 2" in found[7, "cut_every"]
    assert "look: only for mode beats" in found[8, ""]
    assert "'section' or 'cut'" in found[9, "look"]


def test_a_beats_video_resumes_on_the_structure_it_analysed_first(tmp_path: Path) -> None:
    from storage import open_storage

    track = synth("A", bars=3, seed=5)
    job = {"model": "aether", "mode": "beats", "seed": 7, "truncation": 0.7, "fps": 12,
           "width": 32, "height": 32, "yaw": 0.0, "pitch": 0.0, "radius": 2.7, "fov": 30.0,
           "on_beat": "cut", "chunk_frames": 16, "frames": 48, "yaw_from": -180.0,
           "yaw_to": 180.0, "audio": {"key": "p/in/t.wav"}, "cut_every": "bar"}
    fam = family("tiny")
    store = open_storage((tmp_path / "out").as_uri())
    store.put("p/in/t.wav", track.wav, "audio/wav")
    held = [True, False]  # the first attempt stops after its first chunk
    stopped = fam.run([context("video", job, storage=store,
                               still_held=lambda: held.pop(0) if held else True)])
    assert stopped == [[]]
    folder = tmp_path / "out" / "p" / "b1" / "j0"
    assert sorted(p.name for p in folder.iterdir()) == ["chunk-00000.npy", "chunk-structure.json"]
    kept = json.loads((folder / "chunk-structure.json").read_text())
    [[mp4, cuts_json, structure_json]] = fam.run([context("video", job, storage=store)])
    assert (mp4.name, cuts_json.name, structure_json.name) == (
        "video.mp4", "cuts.json", "structure.json")
    assert json.loads(structure_json.encode()) == kept
    sidecar = json.loads(cuts_json.encode())
    bars = [round(d * 12) for d in kept["downbeats"]]
    assert [s["start_frame"] for s in sidecar["segments"]] == [0, *bars]
    resumed = mp4.encode()
    assert not [p for p in folder.iterdir() if p.name.startswith("chunk-")]
    fresh = open_storage((tmp_path / "fresh").as_uri())
    fresh.put("p/in/t.wav", track.wav, "audio/wav")
    [[again, *_]] = fam.run([context("video", job, storage=fresh)])
    assert again.encode() == resumed  # bit for bit: same cuts, same frames, same encoding
