"""Videos render chunk by chunk into storage: a stopped attempt leaves its finished chunks, the
next attempt reuses them instead of starting from frame 0, and the MP4 replaces them."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import av
import numpy as np

from storage import open_storage
from tests.families import context as job_context
from tests.families import family
from workers.families.aether.video import interpolate, slerp

JOB = {"mode": "orbit", "seed": 3, "truncation": 0.7, "frames": 20, "fps": 10, "width": 32,
       "height": 32, "yaw_from": -90.0, "yaw_to": 90.0, "yaw": 0.0, "pitch": 5.0, "radius": 2.7,
       "fov": 36.0, "chunk_frames": 8, "model": "aether"}


def context(store: Any, held: list[bool], progress: list[float] | None = None) -> Any:
    reported = progress if progress is not None else []
    return job_context("video", JOB, 1, storage=store,
                       still_held=lambda: held.pop(0) if held else True,
                       progress=lambda done: reported.append(round(done, 3)) is None)


def test_a_restarted_video_resumes_from_its_last_chunk(tmp_path: Path) -> None:
    store = open_storage((tmp_path / "out").as_uri())
    pipe = family("tiny")
    # first attempt: renders chunk 0, then finds itself cancelled at the next boundary
    progress: list[float] = []
    assert pipe.run([context(store, [True, False], progress)]) == [[]]
    assert progress == [0.38]  # 8 of 20 frames, before encoding
    chunk0 = tmp_path / "out" / "p" / "b1" / "j1" / "chunk-00000.npy"
    assert chunk0.exists() and not (chunk0.parent / "chunk-00001.npy").exists()
    stamp = chunk0.stat().st_mtime_ns
    # second attempt: chunk 0 is read back, chunks 1 and 2 rendered
    progress = []
    [[art]] = pipe.run([context(store, [], progress)])
    assert progress == [0.76, 0.95]  # the stored chunk is not reported again
    assert chunk0.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in chunk0.parent.iterdir()) == [
        "chunk-00000.npy", "chunk-00001.npy", "chunk-00002.npy"]
    data = art.encode()
    assert not list(chunk0.parent.glob("chunk-*"))  # the MP4 replaces the chunks
    with av.open(io.BytesIO(data)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]
        assert c.streams.video[0].codec_context.name == "h264"
    assert len(frames) == 20 and frames[0].shape == (32, 32, 3)
    # and the resumed video is the one an uninterrupted run makes
    fresh = open_storage((tmp_path / "fresh").as_uri())
    [[whole]] = pipe.run([context(fresh, [])])
    with av.open(io.BytesIO(whole.encode())) as c:
        again = [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]
    assert all(np.array_equal(a, b) for a, b in zip(frames, again, strict=True))


def test_slerp_path_passes_through_every_seed() -> None:
    import torch

    ws = torch.randn(3, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose(interpolate(ws, 0.0), ws[0])
    assert torch.allclose(interpolate(ws, 0.5), ws[1])
    assert torch.allclose(interpolate(ws, 1.0), ws[2], atol=1e-6)
    mid = slerp(ws[0], ws[1], 0.5)
    assert abs(float(mid.norm()) - float((ws[0].norm() + ws[1].norm()) / 2)) < 0.5
