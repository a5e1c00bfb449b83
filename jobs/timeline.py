"""A batch as an editorial timeline (OpenTimelineIO): its outputs on a video track in job order,
a beat-cut video as one clip per segment, its music on an audio track, markers on beats and
sections; exported to the formats editors exchange (OTIO, CMX 3600 EDL, FCP 7 XML, FCPXML, AAF,
MLT). Every time is a whole number of frames at the video's rate. Torch-free; OpenTimelineIO is
imported when a timeline is built, so the rest of genfarm runs without the ``timeline`` extra.

Media is referenced as ``genfarm pull`` lays a batch out (:func:`pulled_path`,
:func:`source_path`), relative to the exported file, or by URL (presigned for S3, ``file://``
for a local folder).

Here the timeline is assembled; ``jobs.timeline_media`` gathers what a batch holds (and the
pulled layout), ``jobs.timeline_export`` writes each format, and ``jobs.timeline_common`` holds
the constants, errors and formats; their public names are still importable from here.
"""

from __future__ import annotations

import bisect
from fractions import Fraction
from pathlib import PurePosixPath
from statistics import median
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from jobs.timeline_common import DEFAULT_RATE as DEFAULT_RATE
from jobs.timeline_common import (
    DEFAULT_STILL_SECONDS,
    SIDECAR,
    URL_SECONDS,
    TimelineError,
    import_otio,
    seed_of,
)
from jobs.timeline_common import FORMATS as FORMATS
from jobs.timeline_common import INSTALL_HINT as INSTALL_HINT
from jobs.timeline_common import Format as Format
from jobs.timeline_common import TimelineUnavailable as TimelineUnavailable
from jobs.timeline_common import format_for_path as format_for_path
from jobs.timeline_export import absolute_media as absolute_media
from jobs.timeline_export import adapter_missing as adapter_missing
from jobs.timeline_export import export as export
from jobs.timeline_media import Item, Plan, gather
from jobs.timeline_media import SourceFile as SourceFile
from jobs.timeline_media import batch_sources as batch_sources
from jobs.timeline_media import mp4_frames as mp4_frames
from jobs.timeline_media import pulled_path as pulled_path
from jobs.timeline_media import source_path as source_path

if TYPE_CHECKING:
    import opentimelineio as otio

    from storage import Storage


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
    otio = import_otio()
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


def _name(item: Item, segment: dict[str, Any] | None = None) -> str:
    """``#3 video orbit seed 40``; a segment: ``#8.02 video beats seed 502 A``. Unique in the
    batch (MLT names its producers by them)."""
    p = item.job.params
    kind = " ".join(str(x) for x in (item.job.kind, p.get("mode") or p.get("op")) if x)
    if segment is None:
        seed = seed_of(p)
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
