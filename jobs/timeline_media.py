"""A batch's media for a timeline: where `genfarm pull` lays its outputs and sources out, and what
it holds in job order, read from the database, storage and each MP4's own header."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs.models import Batch, Job, Output
from jobs.states import JobStatus
from jobs.timeline_common import DEFAULT_RATE, SIDECAR, URL_SECONDS, TimelineError

if TYPE_CHECKING:
    from storage import Storage


# -- the layout of a pulled batch, which relative media paths point into ----------------------
def pulled_path(index: int, job_id: str, name: str) -> PurePosixPath:
    """Where `genfarm pull` puts one output by default: ``<job index>-<job id>/<name>``."""
    from storage.keys import safe_part

    return PurePosixPath(f"{index:06d}-{safe_part(job_id)}", safe_part(name))


@dataclass(frozen=True)
class SourceFile:
    """An object a batch's jobs read (a video's music), and where a pulled folder keeps it."""

    key: str
    path: PurePosixPath  # sources/<its key inside the project>
    sha256: str | None


def source_path(storage: Storage, project: str, key: str) -> PurePosixPath | None:
    """``sources/<key relative to the project's folder>``, or None for a key outside the
    project (never followed: whatever a record holds, nothing else of the store is read)."""
    from storage.keys import join, safe_part

    root = join(storage.prefix, project) + "/"
    if not key.startswith(root):
        return None
    try:
        return PurePosixPath("sources", *(safe_part(p) for p in key[len(root):].split("/")))
    except ValueError:
        return None


def batch_sources(session: Session, storage: Storage, batch_id: str) -> list[SourceFile]:
    """The audio files the batch's succeeded jobs used, each once, in job order."""
    project = session.scalar(select(Batch.project).where(Batch.id == batch_id))
    rows = session.execute(select(Job.params).where(
        Job.batch_id == batch_id, Job.status == JobStatus.SUCCEEDED).order_by(Job.index)).all()
    found: dict[str, SourceFile] = {}
    for (params,) in rows:
        audio = params.get("audio") if isinstance(params, dict) else None
        if not isinstance(audio, dict) or not isinstance(audio.get("key"), str):
            continue
        path = source_path(storage, str(project), audio["key"])
        if path is not None and audio["key"] not in found:
            found[audio["key"]] = SourceFile(audio["key"], path, audio.get("sha256"))
    return list(found.values())


# -- what the batch holds, read from the database and storage ---------------------------------
@dataclass
class Item:
    """One job's output as it will sit on the video track."""

    job: Job
    output: Output
    target: str  # the media reference: a relative path or a URL
    rate: int = DEFAULT_RATE
    frames: int = 0  # a video's frame count; 0 for a still
    cuts: dict[str, Any] | None = None  # the cuts.json sidecar of a beat-cut video
    audio: tuple[str, str | None, str] | None = None  # (key, sha256, target) of its music

    @property
    def still(self) -> bool:
        return self.frames == 0


@dataclass
class Plan:
    batch: Batch
    items: list[Item] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # jobs with nothing to place, and why


def gather(session: Session, storage: Storage, batch_id: str, media: str = "relative",
           url_seconds: int = URL_SECONDS) -> Plan:
    """The batch's placeable outputs in job order, with each video's frames and rate (from its
    cuts.json, else its params, else the MP4's own header) and the music it was cut to."""
    if media not in ("relative", "url"):
        raise TimelineError(f"media {media!r}: expected relative or url")
    batch = session.get(Batch, batch_id)
    if batch is None:
        raise TimelineError(f"no batch {batch_id!r}")
    rows = session.execute(
        select(Job, Output).join(Output, Output.job_id == Job.id)
        .where(Job.batch_id == batch.id).order_by(Job.index, Output.name)).all()
    jobs = session.scalars(select(Job).where(Job.batch_id == batch.id).order_by(Job.index))
    per_job: dict[str, list[Output]] = {}
    for job, out in rows:
        per_job.setdefault(job.id, []).append(out)
    plan = Plan(batch)

    def target(key: str, path: PurePosixPath) -> str:
        return str(path) if media == "relative" else _url(storage, key, url_seconds)

    for job in jobs:
        outputs = per_job.get(job.id, [])
        if job.status != JobStatus.SUCCEEDED or not outputs:
            plan.skipped.append(f"#{job.index} {job.kind}: {job.status}, no outputs")
            continue
        sidecar = next((o for o in outputs if o.name == SIDECAR), None)
        for out in outputs:
            where = target(out.key, pulled_path(job.index, job.id, out.name))
            if out.content_type.startswith("image/"):
                plan.items.append(Item(job, out, where))
            elif out.content_type.startswith("video/"):
                plan.items.append(_video(storage, batch.project, job, out, where, sidecar,
                                         target))
    return plan


def _video(storage: Storage, project: str, job: Job, out: Output, where: str,
           sidecar: Output | None, target: Any) -> Item:
    params = job.params
    cuts = None
    if sidecar is not None:
        cuts = json.loads(storage.get(sidecar.key, sha256=sidecar.sha256))
        if not isinstance(cuts, dict) or cuts.get("version") != 1:
            raise TimelineError(f"job #{job.index}: {SIDECAR} is not version 1 of its format")
        try:
            rate, frames = int(cuts["fps"]), int(cuts["frames"])
        except (KeyError, TypeError, ValueError) as exc:
            raise TimelineError(f"job #{job.index}: {SIDECAR} has no usable fps and frames "
                                f"({type(exc).__name__}: {exc})") from exc
    elif params.get("mode") in ("orbit", "interpolate") and "frames" in params:
        rate, frames = int(params["fps"]), int(params["frames"])
    else:  # a beat-cut video of before cuts.json: its length is the music's, read the MP4
        try:
            frames, fps = mp4_frames(storage.get(out.key, sha256=out.sha256))
        except struct.error as exc:  # cut short: its boxes end before they say
            raise TimelineError(f"job #{job.index}: {out.name} is not a whole MP4 "
                                f"({exc})") from exc
        rate = int(params.get("fps") or round(fps))
    item = Item(job, out, where, rate=rate, frames=frames, cuts=cuts)
    audio = (cuts or {}).get("audio") or params.get("audio")
    if isinstance(audio, dict) and isinstance(audio.get("key"), str):
        path = source_path(storage, project, audio["key"])
        if path is not None:
            item.audio = (audio["key"], audio.get("sha256"), target(audio["key"], path))
    return item


def _url(storage: Storage, key: str, seconds: int) -> str:
    from storage.backends.local import LocalStorage

    if isinstance(storage, LocalStorage):
        return storage.path_of(key).as_uri()
    url = storage.presigned_url(key, seconds)
    if url is None:
        raise TimelineError(f"storage {storage.url} gives no URLs; export with media=relative "
                            "and `genfarm pull` the batch beside the file")
    return url


def mp4_frames(data: bytes) -> tuple[int, Fraction]:
    """(frame count, frames per second) of an MP4's first video track, from its sample table
    (``moov/trak/mdia``: ``mdhd`` time scale and duration, ``stts`` sample counts)."""

    def boxes(buf: bytes, start: int, end: int) -> Any:
        while start + 8 <= end:
            size, kind = struct.unpack(">I4s", buf[start:start + 8])
            head = 8
            if size == 1:
                size, head = struct.unpack(">Q", buf[start + 8:start + 16])[0], 16
            elif size == 0:
                size = end - start
            if size < head:
                return
            yield kind, start + head, start + size
            start += size

    def child(buf: bytes, start: int, end: int, name: bytes) -> tuple[int, int] | None:
        return next(((a, b) for k, a, b in boxes(buf, start, end) if k == name), None)

    moov = child(data, 0, len(data), b"moov")
    for kind, a, b in boxes(data, *moov) if moov else ():
        mdia = child(data, a, b, b"mdia") if kind == b"trak" else None
        hdlr = child(data, *mdia, b"hdlr") if mdia else None
        if not mdia or not hdlr or data[hdlr[0] + 8:hdlr[0] + 12] != b"vide":
            continue
        mdhd = child(data, *mdia, b"mdhd")
        minf = child(data, *mdia, b"minf")
        stbl = child(data, *minf, b"stbl") if minf else None
        stts = child(data, *stbl, b"stts") if stbl else None
        if mdhd is None or stts is None:
            break
        if data[mdhd[0]] == 1:
            scale, duration = struct.unpack(">IQ", data[mdhd[0] + 20:mdhd[0] + 32])
        else:
            scale, duration = struct.unpack(">II", data[mdhd[0] + 12:mdhd[0] + 20])
        (n,) = struct.unpack(">I", data[stts[0] + 4:stts[0] + 8])
        frames = sum(struct.unpack(">I", data[stts[0] + 8 + 8 * i:stts[0] + 12 + 8 * i])[0]
                     for i in range(n))
        if frames and duration:
            return frames, Fraction(frames * scale, duration)
        break
    raise TimelineError("no video track with a sample table in the MP4")
