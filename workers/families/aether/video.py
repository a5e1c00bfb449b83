"""The video kind: orbits, interpolations and beat-synced cuts, encoded to H.264 MP4 (PyAV).

Frames render in batches, chunk by chunk; each finished chunk is stored beside the job's
output, so a crashed or handed-back video resumes from its last finished chunk instead of
frame 0. The chunks are deleted once the MP4 is stored.
"""

from __future__ import annotations

import io
import math
from fractions import Fraction
from typing import Any

import av
import numpy as np
import torch

from storage.provenance import s3_metadata
from workers.families.aether.generate import AetherBase
from workers.family import Artifact, JobContext, PermanentError, Result

BEAT_TURN_DEG = 35.0  # on_beat="move": the camera turns this far on each beat


class VideoOps(AetherBase):
    @torch.no_grad()
    def _videos(self, batch: list[JobContext]) -> list[Result]:
        return [self._video(ctx) for ctx in batch]

    def _video(self, ctx: JobContext) -> list[Artifact]:
        job = ctx.params
        audio = None
        if job["mode"] == "beats":
            audio = ctx.read_source(job["audio"])
            samples, rate = decode_audio(audio)
            beats = detect_beats(samples, rate)
            frames = max(2, int(math.ceil(len(samples) / rate * job["fps"])))
        else:
            beats, frames = [], job["frames"]
        plan = self._plan(job, frames, beats)
        chunk = job["chunk_frames"]
        done = set(ctx.chunks())
        parts = []
        for start in range(0, frames, chunk):
            name = f"{start // chunk:05d}.npy"
            if name in done:  # rendered by an earlier attempt
                parts.append(np.load(io.BytesIO(ctx.read_chunk(name))))
                continue
            if not ctx.still_held():  # cancelled or lost: stop at this chunk boundary
                return []
            rendered = self._render(plan, start, min(frames, start + chunk), job)
            buf = io.BytesIO()
            np.save(buf, rendered)
            ctx.store_chunk(name, buf.getvalue(), "application/x-npy")
            parts.append(rendered)
            ctx.progress(min(frames, start + chunk) / frames * 0.95)  # encoding: the rest
        video = np.concatenate(parts)
        prov = {**self.provenance(), "kind": ctx.kind, "params": job, "job_id": ctx.job_id,
                "batch_id": ctx.batch_id, "beats": [round(b, 4) for b in beats]}

        def encode() -> bytes:
            data = encode_mp4(video, job["fps"], audio, prov)
            ctx.delete_chunks()  # the MP4 is what stays; chunks were only for resuming
            return data

        return [Artifact("video.mp4", "video/mp4", encode, metadata=s3_metadata(prov))]

    def _plan(self, job: dict[str, Any], frames: int, beats: list[float]) -> dict[str, Any]:
        """Per frame: which latent (index into ws) and which camera yaw."""
        base = job["source"]["params"] if job.get("source") else None
        seed = base["seed"] if base else job.get("seed", 0)
        trunc = base.get("truncation", job["truncation"]) if base else job["truncation"]
        t = np.arange(frames) / job["fps"]
        if job["mode"] == "orbit":
            seeds, index = [seed], np.zeros(frames, dtype=int)
            yaw = np.linspace(job["yaw_from"], job["yaw_to"], frames)
        elif job["mode"] == "interpolate":
            seeds, index = job["seeds"], None
            yaw = np.full(frames, job["yaw"])
        else:
            cuts = np.searchsorted(np.asarray(beats), t, side="right")  # beats passed so far
            if job["on_beat"] == "cut":
                seeds, index = [seed + i for i in range(len(beats) + 1)], cuts
                yaw = np.full(frames, job["yaw"])
            else:
                seeds, index = [seed], np.zeros(frames, dtype=int)
                yaw = job["yaw"] + BEAT_TURN_DEG * cuts
        trunc_t = torch.full((len(seeds),), float(trunc), device=self.device, dtype=self.dtype)
        w = self.net.w_of([int(s) for s in seeds], trunc_t)
        return {"w": w, "index": index, "yaw": yaw, "frames": frames}

    def _render(self, plan: dict[str, Any], start: int, stop: int, job: dict[str, Any]) -> np.ndarray:
        batch = max(1, self.settings.max_batch)
        out = []
        for a in range(start, stop, batch):
            idx = range(a, min(stop, a + batch))
            if plan["index"] is None:  # interpolate: slerp between consecutive seeds
                w = torch.stack([interpolate(plan["w"], i / max(1, plan["frames"] - 1)) for i in idx])
            else:
                w = plan["w"][torch.as_tensor(plan["index"][list(idx)], device=self.device)]
            cams = [{"yaw": float(plan["yaw"][i]), "pitch": job["pitch"], "radius": job["radius"],
                     "fov": job["fov"]} for i in idx]
            out.append(self.images(cams, ws=self.net.broadcast(w), cameras=cams,
                                   size=(job["height"], job["width"])).numpy())
        return np.concatenate(out)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    na, nb = a / a.norm(), b / b.norm()
    omega = torch.arccos((na * nb).sum().clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    if so.abs() < 1e-6:
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * omega) / so) * a + (torch.sin(t * omega) / so) * b


def interpolate(ws: torch.Tensor, t: float) -> torch.Tensor:
    """The point at fraction ``t`` of a path through ``ws`` (slerp on each segment)."""
    segments = ws.shape[0] - 1
    pos = min(t * segments, segments - 1e-9)
    i = int(pos)
    return slerp(ws[i], ws[i + 1], pos - i)


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """Mono float samples and their rate, from any audio file FFmpeg reads."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = container.streams.audio[0]
            rate = stream.rate or 44100
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            chunks = [r.to_ndarray().reshape(-1) for f in container.decode(stream)
                      for r in resampler.resample(f)]
    except (av.error.FFmpegError, IndexError) as exc:
        raise PermanentError(f"the audio file cannot be decoded: {exc}") from exc
    if not chunks:
        raise PermanentError("the audio file holds no samples")
    return np.concatenate(chunks).astype(np.float32), int(rate)


def detect_beats(samples: np.ndarray, rate: int) -> list[float]:
    """Beat times in seconds (librosa's beat tracker on the onset envelope)."""
    import librosa

    hop = 256
    onset = librosa.onset.onset_strength(y=samples, sr=rate, hop_length=hop)
    _, frames = librosa.beat.beat_track(onset_envelope=onset, sr=rate, hop_length=hop,
                                        tightness=400)
    return [float(t) for t in librosa.frames_to_time(frames, sr=rate, hop_length=hop)]


def encode_mp4(frames: np.ndarray, fps: int, audio: bytes | None, prov: dict[str, Any]) -> bytes:
    """H.264 MP4 of uint8 (N, H, W, 3) frames, with the audio file's track (AAC) when given."""
    import json

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        out.metadata["comment"] = json.dumps(prov, sort_keys=True)[:4000]
        video = out.add_stream("libx264", rate=Fraction(fps, 1))
        video.width, video.height = frames.shape[2], frames.shape[1]
        video.pix_fmt = "yuv420p"
        video.options = {"crf": "20", "preset": "veryfast"}
        sound = None
        if audio is not None:
            source = av.open(io.BytesIO(audio), mode="r")
            src = source.streams.audio[0]
            sound = out.add_stream("aac", rate=44100)
            resampler = av.AudioResampler(format="fltp", layout="stereo", rate=44100)
        for frame in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if sound is not None:
            for f in source.decode(src):
                for r in resampler.resample(f):
                    for packet in sound.encode(r):
                        out.mux(packet)
            for r in resampler.resample(None):
                for packet in sound.encode(r):
                    out.mux(packet)
            for packet in sound.encode():
                out.mux(packet)
            source.close()
    return buf.getvalue()
