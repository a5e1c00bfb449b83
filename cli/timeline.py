"""`genfarm timeline`: a batch as an editorial timeline an editor opens (OTIO, EDL, FCP 7 XML,
FCPXML, AAF, MLT), frame-accurate, its media beside it as `genfarm pull` lays it out."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cli.io import Refused, printable
from cli.options import friendly_errors, settings_options
from jobs.settings import Settings

FORMAT_NAMES = ("otio", "edl", "fcp7", "fcpxml", "aaf", "mlt")  # jobs.timeline.FORMATS


@click.command("timeline")
@click.argument("batch")
@click.option("-o", "--output", "output", required=True,
              type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
              help="File to write ('-' for stdout, with --format). Put it in the folder you "
              "pulled the batch into: relative media paths start there.")
@click.option("--format", "fmt", type=click.Choice(FORMAT_NAMES), default=None,
              help="[default: from -o's extension: .otio .edl .xml (fcp7) .fcpxml .aaf .mlt]")
@click.option("--media", type=click.Choice(["relative", "absolute", "url"]), default="relative",
              show_default=True,
              help="relative: paths as `genfarm pull` lays the batch out, from -o's folder; "
              "absolute: the same made file:// URLs (Final Cut Pro, Premiere); url: the objects "
              "in storage (presigned S3 URLs, valid 7 days; file:// for a local folder).")
@click.option("--still-seconds", type=click.FloatRange(0, 3600, min_open=True), default=None,
              help="How long each still (generate, edit) stays up [default: one bar of the "
              "batch's music when it has beat-cut videos, else 2 s].")
@settings_options
@friendly_errors
def timeline(settings: Settings, batch: str, output: Path, fmt: str | None, media: str,
             still_seconds: float | None) -> None:
    """Write BATCH (an id or a prefix of 6+ characters) as a timeline for an editor.

    \b
    The outputs sit on one video track in job order: a still for --still-seconds, a video
    at its own frame count and rate, a beat-cut video (mode beats) as one clip per segment
    of its cuts.json, so you can re-time and re-cut it; its music on an audio track; markers
    on the beats (bar N, beat) and the section starts (A, B ...). Clip names say job index,
    kind, seed and section (#8.02 video beats seed 502 B); every time is whole frames.
    \b
      genfarm pull 3f2a9c ./cut                   # the media, and the music under sources/
      genfarm timeline 3f2a9c -o ./cut/cut.otio   # then open ./cut/cut.<ext>:
    \b
      .otio    everything (metadata, markers): OpenTimelineIO tools, Resolve 18.5+
               (File > Import > Timeline), otioview
      .edl     CMX 3600, video track, non-drop timecode: any editor (Resolve: File > Import
               > Timeline, then point it at the folder; Avid: import as a bin)
      .xml     FCP 7 XML: Premiere (File > Import), Resolve (File > Import > Timeline);
               use --media absolute for Premiere
      .fcpxml  Final Cut Pro (File > Import > XML), with --media absolute
      .aaf     Avid Media Composer (File > Import; relink to the folder), Resolve
      .mlt     Shotcut (File > Open), Kdenlive (Project > Add Clip), melt: `melt cut.mlt`
               plays it, `melt cut.mlt -consumer avformat:cut.mp4` renders it
    Needs the timeline extra: pip install 'genfarm[timeline]'.
    """
    from jobs.batches import resolve_batch
    from jobs.db import make_engine, session_factory
    from jobs.timeline import (
        absolute_media,
        adapter_missing,
        build_timeline,
        export,
        format_for_path,
    )
    from storage import open_storage

    fmt = fmt or format_for_path(str(output))
    if fmt is None:
        raise Refused(f"-o {str(output)!r}: say --format ({', '.join(FORMAT_NAMES)}), or end "
                      "the name in .otio .edl .xml .fcpxml .aaf or .mlt")
    missing = adapter_missing(fmt)
    if missing:
        raise Refused(missing)
    sessions = session_factory(make_engine(settings.resolved_database_url()))
    storage = open_storage(settings.resolved_storage_url(), endpoint_url=settings.s3_endpoint_url)
    with sessions() as session:
        b = resolve_batch(session, batch)
        made = build_timeline(session, storage, b.id, media="url" if media == "url" else
                              "relative", still_seconds=still_seconds)
    if media == "absolute":
        absolute_media(made, str(output.parent if str(output) != "-" else Path.cwd()))
    data = export(made, fmt)
    clips = len(list(made.find_clips()))
    said = f"{fmt}: {clips} clips, {made.duration().to_frames()} frames at " \
           f"{made.duration().rate:g} fps"
    skipped = made.metadata["genfarm"].get("skipped") or []
    if str(output) == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        click.echo(said, err=True)
    else:
        tmp = output.with_name(output.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(output)
        click.echo(printable(f"{output}: {said}"))
    rates = made.metadata["genfarm"].get("rates") or []
    if len(rates) > 1 and fmt in ("edl", "aaf", "mlt"):
        click.echo(f"warning: the videos run at {', '.join(f'{r:g}' for r in rates)} fps and "
                   f"{fmt} has one rate ({made.duration().rate:g}): the others are not "
                   "frame-accurate there; otio, fcp7 and fcpxml keep each clip's own rate",
                   err=True)
    if skipped:
        click.echo(printable(f"left out {len(skipped)} jobs without outputs, e.g. {skipped[0]}"),
                   err=True)


def register(group: click.Group) -> None:
    group.add_command(timeline)
