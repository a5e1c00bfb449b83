"""What the timeline modules share: their constants and errors, the formats a timeline exports to,
OpenTimelineIO (imported on first use: the ``timeline`` extra is optional) and a job's seed."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from jobs.errors import GenfarmError

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


def import_otio() -> Any:
    try:
        import opentimelineio
    except ImportError:
        raise TimelineUnavailable(f"timeline export needs OpenTimelineIO: {INSTALL_HINT}") from None
    return opentimelineio


def seed_of(params: dict[str, Any]) -> Any:
    source = params.get("source")
    if params.get("seed") is not None:
        return params["seed"]
    if isinstance(source, dict) and isinstance(source.get("params"), dict):
        return source["params"].get("seed")
    return None
