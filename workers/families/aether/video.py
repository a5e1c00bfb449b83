"""The video kind: orbits, interpolations and cuts on the music's grid, encoded to H.264 MP4
(PyAV).

Frames render in batches, chunk by chunk; each finished chunk is stored beside the job's
output, so a crashed or handed-back video resumes from its last finished chunk instead of
frame 0. The chunks are deleted once the MP4 is stored. A beats video cuts on the structure of
its music (``workers.audio``: analysed here, or an audio job's ``structure.json``), as
``cuts.py`` plans, and stores ``cuts.json`` beside the MP4 (and ``structure.json`` when it
analysed the music itself).
"""

from __future__ import annotations

import hashlib
import io
import json
from fractions import Fraction
from typing import Any

import av
import numpy as np
import torch

from jobs.families.audio import STRUCTURE
from storage.provenance import s3_metadata
from workers.audio import analyse, decode
from workers.families.aether import cuts
from workers.families.aether.generate import AetherBase
from workers.family import Artifact, JobContext, PermanentError, Result, constant

VARIATION = 1.0  # look "section": how far each cut moves the latent (a default latent edit: 3)
SIDECAR = "cuts.json"
MAX_FRAMES = 3000  # as many as an orbit may have (the schema's bound on frames)


class VideoOps(AetherBase):
    @torch.no_grad()
    def _videos(self, batch: list[JobContext]) -> list[Result]:
        return [self._video(ctx) for ctx in batch]

    def _video(self, ctx: JobContext) -> list[Artifact]:
        job = ctx.params
        audio, extra, segments, beats = None, [], None, []
        if job["mode"] == "beats":
            audio = ctx.read_source(job["audio"])
            samples, rate = decode(audio)
            # whole numbers: a float product can make one frame too many
            frames = max(2, -(-len(samples) * job["fps"] // rate))
            if frames > MAX_FRAMES:  # every frame is held until the MP4 is encoded
                raise PermanentError(f"audio: {len(samples) / rate:.1f} s at {job['fps']} fps "
                                     f"is {frames} frames; a video has at most {MAX_FRAMES} "
                                     "(cut the track, or lower fps)")
            structure, analysed = self._structure(ctx, samples, rate)
            made_of = (structure.get("provenance") or {}).get("params", {}).get("audio") or {}
            if made_of.get("key") not in (None, job["audio"].get("key")):
                raise PermanentError(f"structure: made from {made_of['key']}, not from this "
                                     f"video's audio {job['audio'].get('key')}")
            segments = cuts.segments(structure, job["fps"], frames, job, self._seed(job))
            beats = structure.get("beats", [])
            side = cuts.sidecar(segments, structure, job, job["audio"]["key"],
                                hashlib.sha256(audio).hexdigest())
            extra.append((SIDECAR, side))
            if analysed:
                extra.append((STRUCTURE, structure))
        else:
            frames = job["frames"]
        plan = self._plan(job, frames, segments)
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

        meta = s3_metadata(prov)
        sidecars = [Artifact(name, "application/json",
                             constant(json.dumps(body, sort_keys=True).encode()), metadata=meta)
                    for name, body in extra]
        return [Artifact("video.mp4", "video/mp4", encode, metadata=meta), *sidecars]

    def _structure(self, ctx: JobContext, samples: np.ndarray, rate: int
                   ) -> tuple[dict[str, Any], bool]:
        """The music's structure, and whether it was analysed here: an audio job's
        structure.json when the job names one, else analysed once (kept as a chunk, so a
        resumed attempt cuts exactly where the first did)."""
        ref = ctx.params.get("structure")
        if ref:
            if not ref.get("key"):  # a line of the same manifest: that job's output
                ref = {"key": ctx.storage.job_key(ctx.project, ctx.batch_id, ref["job"],
                                                  STRUCTURE)}
            try:
                return json.loads(ctx.read_source(ref)), False
            except (KeyError, ValueError) as exc:
                raise PermanentError(f"structure: cannot read {ref.get('key')}: "
                                     f"{exc}") from exc
        if STRUCTURE in ctx.chunks():
            return json.loads(ctx.read_chunk(STRUCTURE)), True
        structure = analyse(samples, rate)
        ctx.store_chunk(STRUCTURE, json.dumps(structure, sort_keys=True).encode(),
                        "application/json")
        return structure, True

    @staticmethod
    def _seed(job: dict[str, Any]) -> int:
        base = job["source"]["params"] if job.get("source") else None
        return int(base["seed"] if base else job.get("seed", 0))

    def _plan(self, job: dict[str, Any], frames: int,
              segments: list[dict[str, Any]] | None) -> dict[str, Any]:
        """Per frame: which latent (index into w) and which camera yaw."""
        base = job["source"]["params"] if job.get("source") else None
        trunc = base.get("truncation", job["truncation"]) if base else job["truncation"]
        variation = None
        if job["mode"] == "orbit":
            seeds, index = [self._seed(job)], np.zeros(frames, dtype=int)
            yaw = np.linspace(job["yaw_from"], job["yaw_to"], frames)
        elif job["mode"] == "interpolate":
            seeds, index = job["seeds"], None
            yaw = np.full(frames, job["yaw"])
        else:  # beats: one latent per segment
            assert segments is not None
            seeds = [s["seed"] for s in segments]
            variation = [s["variation"] for s in segments]
            index, yaw = np.zeros(frames, dtype=int), np.zeros(frames)
            for i, seg in enumerate(segments):
                index[seg["start_frame"]: seg["end_frame"]] = i
                yaw[seg["start_frame"]: seg["end_frame"]] = seg["yaw"]
        trunc_t = torch.full((len(seeds),), float(trunc), device=self.device, dtype=self.dtype)
        w = self.net.w_of([int(s) for s in seeds], trunc_t)
        if variation is not None and any(variation):
            w = w + VARIATION * self._nudges(variation).to(w.dtype)
        return {"w": w, "index": index, "yaw": yaw, "frames": frames}

    def _nudges(self, variation: list[int]) -> torch.Tensor:
        """A small move along a principal direction of w for each cut inside a section (the
        cut's number picks the direction and its sign; 0: none)."""
        dirs = self.net.directions
        k = dirs.shape[0]
        out = torch.zeros(len(variation), dirs.shape[1], device=dirs.device, dtype=dirs.dtype)
        for i, v in enumerate(variation):
            if v:
                out[i] = dirs[(v - 1) % k] * (1.0 if ((v - 1) // k) % 2 == 0 else -1.0)
        return out

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
