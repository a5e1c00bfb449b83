"""Writing a timeline in each format editors exchange: the OpenTimelineIO adapter's output, with
what each adapter leaves out (frame size, rate, clip comments, AAF mob ids) filled in."""

from __future__ import annotations

import os
import tempfile
from fractions import Fraction
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from jobs.timeline_common import (
    DEFAULT_RATE,
    FORMATS,
    INSTALL_HINT,
    TimelineError,
    TimelineUnavailable,
    import_otio,
    seed_of,
)

if TYPE_CHECKING:
    import opentimelineio as otio


def adapter_missing(fmt: str) -> str | None:
    """What is missing to write ``fmt`` (a sentence naming the package), or None."""
    if fmt not in FORMATS:
        return f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}"
    try:
        otio = import_otio()
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
    otio = import_otio()
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
    shown = {"seed": segment.get("seed", seed_of(params)), "section": segment.get("section"),
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
        if not fmt.get("name"):  # an empty name (the adapter's), or none at all
            fmt.attrib.pop("name", None)
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
