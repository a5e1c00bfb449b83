"""A batch as an editorial timeline (OpenTimelineIO): its outputs on a video track in job order,
a beat-cut video as one clip per segment, its music on an audio track, markers on beats and
sections; exported to the formats editors exchange (OTIO, CMX 3600 EDL, FCP 7 XML, FCPXML, AAF,
MLT). Every time is a whole number of frames at the video's rate. Torch-free; OpenTimelineIO is
imported when a timeline is built, so the rest of genfarm runs without the ``timeline`` extra.

Media is referenced as ``genfarm pull`` lays a batch out (:func:`pulled_path`,
:func:`source_path`), relative to the exported file, or by URL (presigned for S3, ``file://``
for a local folder).
"""

from __future__ import annotations

import bisect
import json
import os
import struct
import tempfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import PurePosixPath
from statistics import median
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs.errors import GenfarmError
from jobs.models import Batch, Job, Output
from jobs.states import JobStatus

if TYPE_CHECKING:
    import opentimelineio as otio

    from storage import Storage

INSTALL_HINT = "pip install 'genfarm[timeline]'"
DEFAULT_RATE = 24  # a batch of stills only
DEFAULT_STILL_SECONDS = 2.0
URL_SECONDS = 7 * 24 * 3600  # presigned URLs: the longest S3 (SigV4) signs for
SIDECAR = "cuts.json"


class TimelineError(GenfarmError):
    """A timeline cannot be built or written."""


class TimelineUnavailable(TimelineError):
    """OpenTimelineIO or one of its adapters is not installed."""


@dataclass(frozen=True)
class Format:
    """One export format: the OpenTimelineIO adapter that writes it, its file name extension,
    its media type, and whether that adapter reads it back."""

    adapter: str
    suffix: str
    content_type: str
    package: str
    readable: bool = True


FORMATS: dict[str, Format] = {
    "otio": Format("otio_json", ".otio", "application/json", "opentimelineio"),
    "edl": Format("cmx_3600", ".edl", "text/plain; charset=utf-8", "otio-cmx3600-adapter"),
    "fcp7": Format("fcp_xml", ".xml", "application/xml", "otio-fcp-adapter"),
    "fcpxml": Format("fcpx_xml", ".fcpxml", "application/xml", "otio-fcpx-xml-adapter"),
    "aaf": Format("AAF", ".aaf", "application/octet-stream", "otio-aaf-adapter"),
    "mlt": Format("mlt_xml", ".mlt", "application/xml", "otio-mlt-adapter", readable=False),
}


def format_for_path(path: str) -> str | None:
    """The format a file name asks for by its extension (``cut.fcpxml`` -> fcpxml), if any."""
    suffix = os.path.splitext(path)[1].lower()
    return next((name for name, f in FORMATS.items() if f.suffix == suffix), None)


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


# -- the timeline ---------------------------------------------------------------------------
def _otio() -> Any:
    try:
        import opentimelineio
    except ImportError:
        raise TimelineUnavailable(f"timeline export needs OpenTimelineIO: {INSTALL_HINT}") from None
    return opentimelineio


def build_timeline(session: Session, storage: Storage, batch_id: str, *,
                   media: str = "relative", still_seconds: float | None = None,
                   url_seconds: int = URL_SECONDS) -> otio.schema.Timeline:
    """The batch as a timeline: see the module docstring. ``still_seconds`` is how long a
    still stays up (default: one bar when the batch's videos were cut to music, else 2 s)."""
    return assemble(gather(session, storage, batch_id, media, url_seconds), still_seconds)


def frame_of(seconds: float, rate: int) -> int:
    """The frame nearest ``seconds``: where a beats video cuts for a beat at that time
    (``round(t * fps)``), so a marker sits on its cut."""
    return round(seconds * rate)


def bar_frames(plan: Plan, rate: int) -> int | None:
    """One bar of the batch's music at ``rate``: the median time between downbeats (else four
    beats), if any of its videos carries beats."""
    for item in plan.items:
        cuts = item.cuts or {}
        downbeats, beats = cuts.get("downbeats") or [], cuts.get("beats") or []
        if len(downbeats) >= 2:
            bar = median(b - a for a, b in zip(downbeats, downbeats[1:], strict=False))
        elif len(beats) >= 2:
            bar = 4 * median(b - a for a, b in zip(beats, beats[1:], strict=False))
        else:
            continue
        return max(1, round(bar * rate))
    return None


def assemble(plan: Plan, still_seconds: float | None = None) -> otio.schema.Timeline:
    """The OpenTimelineIO timeline of a gathered plan."""
    otio = _otio()
    if not plan.items:
        left = f"; left out: {', '.join(plan.skipped[:3])}" if plan.skipped else ""
        raise TimelineError(f"batch {plan.batch.id} has no images or videos to place{left}")
    videos = [i for i in plan.items if not i.still]
    rate = videos[0].rate if videos else DEFAULT_RATE
    if still_seconds is not None:
        if not 0 < still_seconds <= 3600:
            raise TimelineError(f"still_seconds {still_seconds}: expected 0 < seconds <= 3600")
        still = max(1, round(still_seconds * rate))
    else:
        still = bar_frames(plan, rate) or round(DEFAULT_STILL_SECONDS * rate)
    batch = plan.batch
    timeline = otio.schema.Timeline(name=batch.name or f"genfarm {batch.id}",
                                    global_start_time=otio.opentime.RationalTime(0, rate))
    first = videos[0] if videos else None
    timeline.metadata["genfarm"] = {
        "batch_id": batch.id, "project": batch.project, "rate": rate,
        "width": int(first.job.params.get("width", 0)) if first else 0,
        "height": int(first.job.params.get("height", 0)) if first else 0,
        "rates": sorted({i.rate for i in videos}) or [rate], "skipped": list(plan.skipped)}
    video = otio.schema.Track(name="V1", kind=otio.schema.TrackKind.Video)
    audio = otio.schema.Track(name="A1", kind=otio.schema.TrackKind.Audio)
    timeline.tracks.append(video)
    at = 0  # the record frame the next clip starts at, in timeline frames
    audio_at = 0
    for item in plan.items:
        clips = _still(otio, item, still, rate) if item.still else _clips(otio, item)
        for clip in clips:
            video.append(clip)
        # its length in timeline frames: a video at another rate keeps its own (its clips'
        # source ranges), the record side counts at the timeline's
        length = sum(c.source_range.duration.value for c in clips)
        if not item.still and item.rate != rate:
            length = round(Fraction(int(length) * rate, item.rate))
        if item.audio is not None:
            if at > audio_at:
                audio.append(otio.schema.Gap(source_range=_range(otio, 0, at - audio_at, rate)))
            audio.append(_audio_clip(otio, item))
            audio_at = at + int(length)
        at += int(length)
    if len(audio):
        timeline.tracks.append(audio)
    return timeline


def _range(otio: Any, start: int, frames: int, rate: int) -> Any:
    return otio.opentime.TimeRange(otio.opentime.RationalTime(start, rate),
                                   otio.opentime.RationalTime(frames, rate))


def _meta(item: Item, segment: dict[str, Any] | None = None) -> dict[str, Any]:
    job, out = item.job, item.output
    return {"job_id": job.id, "batch_id": job.batch_id, "index": job.index, "kind": job.kind,
            "model": job.model, "params": job.params, "output": out.name, "key": out.key,
            "sha256": out.sha256, "segment": segment}


def _seed(params: dict[str, Any]) -> Any:
    source = params.get("source")
    if params.get("seed") is not None:
        return params["seed"]
    if isinstance(source, dict) and isinstance(source.get("params"), dict):
        return source["params"].get("seed")
    return None


def _name(item: Item, segment: dict[str, Any] | None = None) -> str:
    """``#3 video orbit seed 40``; a segment: ``#8.02 video beats seed 502 A``. Unique in the
    batch (MLT names its producers by them)."""
    p = item.job.params
    kind = " ".join(str(x) for x in (item.job.kind, p.get("mode") or p.get("op")) if x)
    if segment is None:
        seed = _seed(p)
        tail = f" seed {seed}" if seed is not None else ""
        # an output named for its media type (an image, a video) is the job's own: not named
        named = PurePosixPath(item.output.name).stem == item.output.content_type.split("/")[0]
        extra = "" if named else f" {item.output.name}"
        return f"#{item.job.index} {kind}{tail}{extra}"
    seed = segment.get("seed")
    section = segment.get("section")
    return (f"#{item.job.index}.{int(segment['index']):02d} {kind}"
            + (f" seed {seed}" if seed is not None else "") + (f" {section}" if section else ""))


def _reel(item: Item) -> dict[str, str]:
    """An EDL reel name (8 characters) per job: ``J0000012``."""
    return {"reel": f"J{item.job.index:07d}"[-8:]}


def _still(otio: Any, item: Item, frames: int, rate: int) -> list[Any]:
    ref = otio.schema.ExternalReference(target_url=item.target,
                                        available_range=_range(otio, 0, frames, rate))
    return [otio.schema.Clip(name=_name(item), media_reference=ref,
                             source_range=_range(otio, 0, frames, rate),
                             metadata={"genfarm": _meta(item), "cmx_3600": _reel(item)})]


def _clips(otio: Any, item: Item) -> list[Any]:
    """A video: one clip, or one per segment of its cuts.json with markers on its beats and
    section starts; every clip points into the same MP4."""
    rate, frames = item.rate, item.frames
    reel = _reel(item)

    def ref() -> Any:
        return otio.schema.ExternalReference(target_url=item.target,
                                             available_range=_range(otio, 0, frames, rate))

    segments = (item.cuts or {}).get("segments") or []
    if not segments:
        return [otio.schema.Clip(name=_name(item), media_reference=ref(),
                                 source_range=_range(otio, 0, frames, rate),
                                 metadata={"genfarm": _meta(item), "cmx_3600": reel})]
    clips = []
    last = 0
    for seg in segments:
        try:
            start, end = int(seg["start_frame"]), int(seg["end_frame"])
        except (KeyError, TypeError, ValueError) as exc:
            raise TimelineError(f"job #{item.job.index}: {SIDECAR} segment {seg.get('index')}"
                                f" has no usable start_frame and end_frame ({exc})") from exc
        if start != last or end <= start or end > frames:
            raise TimelineError(f"job #{item.job.index}: {SIDECAR} segment {seg.get('index')} "
                                f"spans frames {start}..{end}, expected {last}.. up to {frames}")
        last = end
        clip = otio.schema.Clip(name=_name(item, seg), media_reference=ref(),
                                source_range=_range(otio, start, end - start, rate),
                                metadata={"genfarm": _meta(item, seg), "cmx_3600": reel})
        clips.append(clip)
    if last != frames:
        raise TimelineError(f"job #{item.job.index}: {SIDECAR} segments end at frame {last}, "
                            f"the video has {frames}")
    _markers(otio, item, clips)
    return clips


def _markers(otio: Any, item: Item, clips: list[Any]) -> None:
    """Markers (in each clip's source frames, as OpenTimelineIO wants them) on the clip that
    shows the frame: section starts named by their label, downbeats ``bar N``, beats ``beat``."""
    cuts = item.cuts or {}
    rate = item.rate
    marks: list[tuple[int, str, str]] = []
    for s in cuts.get("sections") or []:
        marks.append((frame_of(float(s["start"]), rate), str(s.get("label") or "section"),
                      otio.schema.MarkerColor.RED))
    downbeats = {frame_of(float(t), rate) for t in cuts.get("downbeats") or []}
    for n, f in enumerate(sorted(downbeats), start=1):
        marks.append((f, f"bar {n}", otio.schema.MarkerColor.CYAN))
    for t in cuts.get("beats") or []:
        f = frame_of(float(t), rate)
        if f not in downbeats:
            marks.append((f, "beat", otio.schema.MarkerColor.GREEN))
    # the clips follow each other frame after frame: the one showing a frame by bisection
    starts = [c.source_range.start_time.value for c in clips]
    ends = [c.source_range.end_time_exclusive().value for c in clips]
    for frame, name, color in sorted(marks, key=lambda m: m[0]):
        i = bisect.bisect_right(starts, frame) - 1
        if i < 0 or frame >= ends[i]:
            continue  # before the first frame or past the last
        clip = clips[i]
        clip.markers.append(otio.schema.Marker(
            name=name, color=color,
            marked_range=_range(otio, frame, 0, rate),
            metadata={"genfarm": {"frame": frame}}))


def _audio_clip(otio: Any, item: Item) -> Any:
    assert item.audio is not None
    key, sha256, where = item.audio
    rate, frames = item.rate, item.frames
    ref = otio.schema.ExternalReference(target_url=where,
                                        available_range=_range(otio, 0, frames, rate))
    return otio.schema.Clip(name=f"#{item.job.index} audio {PurePosixPath(key).name}",
                            media_reference=ref, source_range=_range(otio, 0, frames, rate),
                            metadata={"genfarm": {"key": key, "sha256": sha256,
                                                  "job_id": item.job.id}})


# -- writing ----------------------------------------------------------------------------------
def adapter_missing(fmt: str) -> str | None:
    """What is missing to write ``fmt`` (a sentence naming the package), or None."""
    if fmt not in FORMATS:
        return f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}"
    try:
        otio = _otio()
    except TimelineUnavailable as exc:
        return str(exc)
    spec = FORMATS[fmt]
    if spec.adapter not in otio.adapters.available_adapter_names():
        return (f"format {fmt} needs the OpenTimelineIO adapter {spec.adapter!r} "
                f"(package {spec.package}): {INSTALL_HINT}")
    return None


def export(timeline: otio.schema.Timeline, fmt: str) -> bytes:
    """``timeline`` written in ``fmt`` (one of :data:`FORMATS`)."""
    problem = adapter_missing(fmt)
    if problem:
        raise TimelineUnavailable(problem)
    otio = _otio()
    timeline = timeline.deepcopy()  # some adapters edit what they write (names, metadata)
    write = _WRITERS.get(fmt)
    if write is not None:
        return write(otio, timeline)
    text = otio.adapters.write_to_string(timeline, adapter_name=FORMATS[fmt].adapter)
    return text.encode() if isinstance(text, str) else bytes(text)


def absolute_media(timeline: otio.schema.Timeline, folder: str) -> None:
    """Relative media references made ``file://`` URLs under ``folder``, for editors that
    take no relative paths (Final Cut Pro, Premiere)."""
    from pathlib import Path

    root = Path(folder).resolve()
    for clip in timeline.find_clips():
        ref = clip.media_reference
        target = getattr(ref, "target_url", "")
        if target and "://" not in target and not os.path.isabs(target):
            ref.target_url = root.joinpath(*PurePosixPath(target).parts).as_uri()


def _comments(clip: Any) -> dict[str, str]:
    """What an editor's comment columns can show of a clip: its job, what varies, its sha256."""
    meta = clip.metadata.get("genfarm") or {}
    if "index" not in meta:  # the music
        return {"key": str(meta.get("key", "")), "sha256": str(meta.get("sha256") or "")}
    params, segment = dict(meta.get("params") or {}), meta.get("segment") or {}
    shown = {"seed": segment.get("seed", _seed(params)), "section": segment.get("section"),
             "yaw": segment.get("yaw", params.get("yaw")), "prompt": params.get("prompt")}
    what = ", ".join(f"{k} {v}" for k, v in shown.items() if v is not None)
    return {"job": f"#{meta['index']} {meta.get('job_id', '')}", "what": what,
            "sha256": str(meta.get("sha256", ""))}


def _write_fcp7(otio: Any, timeline: Any) -> bytes:
    """FCP 7 XML with the job, params and sha256 of each clip in its master comments (the
    Comment columns of Premiere and Resolve)."""
    for clip in timeline.find_clips():
        c = _comments(clip)
        clip.metadata["fcp_xml"] = {"comments": {
            f"mastercomment{i}": v for i, v in enumerate(c.values(), start=1)}}
    meta = timeline.metadata.get("genfarm") or {}
    if meta.get("width") and meta.get("height"):  # the sequence's frame size
        # FCP 7's <media><video><format> element (the XML's own names, not genfarm's kinds)
        timeline.metadata["fcp_xml"] = {"media": dict(video={"format": {"samplecharacteristics": {
            "width": str(meta["width"]), "height": str(meta["height"]),
            "pixelaspectratio": "square",
            "rate": {"timebase": str(round(_rate(timeline))), "ntsc": "FALSE"}}}})}
    text = otio.adapters.write_to_string(timeline, adapter_name="fcp_xml")
    return text.encode()


def _write_fcpxml(otio: Any, timeline: Any) -> bytes:
    """FCPXML, its formats given the frame size the adapter leaves out (it asks ffprobe)."""
    from xml.etree import ElementTree

    text = otio.adapters.write_to_string(timeline, adapter_name="fcpx_xml")
    meta = timeline.metadata.get("genfarm") or {}
    if not (meta.get("width") and meta.get("height")):
        return text.encode()
    head, sep, body = text.partition("<fcpxml")
    root = ElementTree.fromstring(sep + body)
    for fmt in root.iter("format"):
        fmt.set("width", str(meta["width"]))
        fmt.set("height", str(meta["height"]))
        if not fmt.get("name"):
            del fmt.attrib["name"]
    return (head + ElementTree.tostring(root, encoding="unicode") + "\n").encode()


def _write_edl(otio: Any, timeline: Any) -> bytes:
    """CMX 3600 of the video track (the adapter writes one track), non-drop timecode at the
    timeline's rate, said in an FCM line (which the adapter does not write)."""
    text = otio.adapters.write_to_string(timeline, adapter_name="cmx_3600", rate=_rate(timeline))
    head, _, rest = text.partition("\n\n")
    if not head.startswith("TITLE:"):
        head, rest = "", text
    return f"{head}\nFCM: NON-DROP FRAME\n{rest}".lstrip("\n").encode()


def _write_aaf(otio: Any, timeline: Any) -> bytes:
    """AAF (written to a file only). Each clip is a master clip of its own name (a segment of
    a beat-cut video too: the adapter names a master mob's clips all alike), with its job,
    params and sha256 as comments; the MobIDs are derived from the object's key and segment,
    so exports of the same batch name the same mobs again."""
    import uuid

    import aaf2.mobid

    for clip in timeline.find_clips():
        if "MobID" not in (clip.metadata.get("AAF") or {}):
            mob = aaf2.mobid.UniqueMobID()
            mob.material = uuid.uuid5(uuid.NAMESPACE_URL, _media_identity(clip))
            clip.metadata["AAF"] = {"MobID": str(mob), "UserComments": _comments(clip)}
    with tempfile.TemporaryDirectory(prefix="genfarm-aaf-") as tmp:
        path = os.path.join(tmp, "timeline.aaf")
        try:
            otio.adapters.write_to_file(timeline, path, adapter_name="AAF")
        except otio.exceptions.OTIOError as exc:  # e.g. clips of several frame rates
            raise TimelineError(f"AAF: {exc}".strip()) from None
        with open(path, "rb") as f:
            return f.read()


def _media_identity(clip: Any) -> str:
    """What names a clip's media and part whatever way it is referenced: the object's key
    (else the reference's target) and the segment's index."""
    meta = clip.metadata.get("genfarm") or {}
    where = str(meta.get("key") or getattr(clip.media_reference, "target_url", "") or clip.name)
    segment = meta.get("segment") or {}
    return f"{where}#{segment.get('index', '')}"


def _write_mlt(otio: Any, timeline: Any) -> bytes:
    """MLT XML with a profile (size, rate) melt, Shotcut and Kdenlive take as is."""
    meta = dict(timeline.metadata.get("genfarm") or {})
    rate = Fraction(_rate(timeline)).limit_denominator(1001)
    profile: dict[str, str] = {"frame_rate_num": str(rate.numerator),
                               "frame_rate_den": str(rate.denominator), "progressive": "1"}
    if meta.get("width") and meta.get("height"):
        profile.update(width=str(meta["width"]), height=str(meta["height"]),
                       display_aspect_num=str(meta["width"]),
                       display_aspect_den=str(meta["height"]),
                       sample_aspect_num="1", sample_aspect_den="1")
    timeline.global_start_time = None  # else the adapter sets the rate again, from a float
    text = otio.adapters.write_to_string(timeline, adapter_name="mlt_xml", **profile)
    return text.encode() if isinstance(text, str) else bytes(text)


def _rate(timeline: Any) -> float:
    meta = timeline.metadata.get("genfarm") or {}
    if meta.get("rate"):
        return float(meta["rate"])
    if timeline.global_start_time is not None:
        return float(timeline.global_start_time.rate)
    return float(DEFAULT_RATE)


_WRITERS = {"edl": _write_edl, "fcp7": _write_fcp7, "fcpxml": _write_fcpxml, "aaf": _write_aaf,
            "mlt": _write_mlt}
