"""`genfarm audio analyse`: the structure of a track (beats, bars, tempo map, sections,
energy) as a one-job batch of the audio kind, waited for and summed up. The analysis runs on a
worker (librosa is worker-side); this command only submits, waits and reads structure.json."""

from __future__ import annotations

import json
from typing import Any

import click

from cli.io import Failure, printable
from cli.options import friendly_errors, settings_options
from jobs.settings import Settings


@click.group()
def audio() -> None:
    """Music for beat-cut videos: analyse a track's structure.

    \b
      genfarm upload track.wav --project acme           # -> in/track.wav
      genfarm audio analyse in/track.wav --project acme  # tempo map, bars, sections
    The structure.json it makes can drive any number of beats videos
    ({"structure": {"job": ID}}), so the music is analysed once. See docs/music-video.md.
    """


@audio.command("analyse")
@click.argument("key")
@click.option("--project", "-p", required=True, help="Project whose storage holds KEY.")
@click.option("--meter", type=click.IntRange(1, 12), default=4, show_default=True,
              help="Beats per bar (4 for 4/4, 3 for 3/4 ...).")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait for the analysis and print it; --no-wait prints the job's id at once.")
@click.option("--json", "as_json", is_flag=True,
              help="Print structure.json itself (with --no-wait: the batch and job ids).")
@settings_options
@friendly_errors
def analyse(settings: Settings, key: str, project: str, meter: int, wait: bool,
            as_json: bool) -> None:
    """Analyse the audio file KEY (a key in PROJECT's storage, as `genfarm upload` prints it)
    on a worker: beats, downbeats and bars, the tempo map (one entry per tempo change),
    sections labelled A, B, ... (a label repeats when the music does) and an energy curve.

    \b
    Prints, e.g.:
      job       3f2a...  structure acme/6b1c.../3f2a.../structure.json
      track     44.5 s, 96 beats, 24 bars of 4
      tempo     0:00.00  120.2 bpm
                0:24.25  149.8 bpm
      sections  A  0:00.00  to  0:16.25   8 bars
                B  0:16.25  to  0:30.65   8 bars
                A  0:30.65  to  0:44.45   8 bars
      energy    peaks at 0:12.54 (1.00), 0:38.17 (0.98)
    Then cut a video on it: {"kind": "video", "mode": "beats", "seed": 1,
    "audio": {"key": KEY}, "structure": {"job": "3f2a..."}, "cut_every": {"A": "bar"}}.
    Exit status: 0 when the analysis succeeded, 1 when it failed, 2 for a refused request.
    """
    from jobs.kinds import AUDIO
    from workers.app import make_submitter

    submitter = make_submitter(settings)
    line = dict(kind=AUDIO.name, audio={"key": key}, meter=meter)
    source = f"genfarm audio analyse {key}"[:200]
    specs = submitter.validate([line], source="command line", project=project)
    result = submitter.submit(project, specs, source=source)
    job_id = _only_job(submitter.sessions, result.batch_id)
    if not wait:
        if as_json:
            click.echo(json.dumps({"batch_id": result.batch_id, "job_id": job_id}))
        else:
            click.echo(job_id)
        return
    from cli.main import wait_for_batch

    summary = wait_for_batch(submitter.sessions, result.batch_id,
                             every_s=settings.progress_seconds)
    if summary["status"] != "succeeded":
        error = _job_error(submitter.sessions, job_id)
        raise Failure(f"the analysis of {key} {summary['status']}: {error}")
    out_key, structure = _structure(settings, submitter.sessions, job_id)
    if as_json:
        click.echo(json.dumps(structure, indent=1))
    else:
        click.echo(printable(f"job       {job_id}  structure {out_key}"))
        click.echo(describe(structure))


def _only_job(sessions: Any, batch_id: str) -> str:
    from sqlalchemy import select

    from jobs.models import Job

    with sessions() as session:
        return str(session.scalars(select(Job.id).where(Job.batch_id == batch_id)).one())


def _job_error(sessions: Any, job_id: str) -> str:
    from jobs.models import Job

    with sessions() as session:
        job = session.get(Job, job_id)
        return str(job.error or job.status) if job is not None else "the job is gone"


def _structure(settings: Settings, sessions: Any, job_id: str) -> tuple[str, dict[str, Any]]:
    from sqlalchemy import select

    from jobs.families.audio import STRUCTURE
    from jobs.models import Output
    from storage import open_storage

    with sessions() as session:
        out = session.scalars(select(Output).where(Output.job_id == job_id,
                                                   Output.name == STRUCTURE)).one()
    storage = open_storage(settings.resolved_storage_url(), endpoint_url=settings.s3_endpoint_url)
    return out.key, json.loads(storage.get(out.key, sha256=out.sha256))


def describe(structure: dict[str, Any]) -> str:
    """The readable summary: length, tempo map, sections with their bars, energy peaks."""
    bars = structure.get("bars", [])
    lines = [f"track     {structure.get('duration', 0):.1f} s, "
             f"{len(structure.get('beats', []))} beats, {len(bars)} bars of "
             f"{structure.get('meter', 4)}"]
    for i, t in enumerate(structure.get("tempo", []) or [{"start": 0.0, "bpm": 0.0}]):
        head = "tempo     " if i == 0 else " " * 10
        bpm = f"{t['bpm']:.1f} bpm" if t["bpm"] else "no beat found"
        lines.append(f"{head}{clock(t['start'])}  {bpm}")
    for i, s in enumerate(structure.get("sections", [])):
        head = "sections  " if i == 0 else " " * 10
        count = sum(1 for b in bars if s["start"] - 1e-6 <= b["start"] < s["end"] - 1e-6)
        lines.append(printable(f"{head}{s['label']:<2} {clock(s['start'])}  to  "
                               f"{clock(s['end'])}  {count:>3} bars"))
    peaks = energy_peaks(structure.get("energy", {}))
    if peaks:
        lines.append("energy    peaks at " + ", ".join(f"{clock(t)} ({v:.2f})" for t, v in peaks))
    return "\n".join(lines)


def energy_peaks(energy: dict[str, Any], count: int = 3, apart_s: float = 4.0
                 ) -> list[tuple[float, float]]:
    """The loudest moments of the energy curve, at least ``apart_s`` apart, in time order."""
    hop, values = float(energy.get("hop") or 0.0), list(energy.get("values") or [])
    if not hop or not values:
        return []
    picked: list[tuple[float, float]] = []
    for i in sorted(range(len(values)), key=lambda i: (-values[i], i)):
        t = i * hop
        if all(abs(t - p) >= apart_s for p, _ in picked):
            picked.append((t, float(values[i])))
            if len(picked) == count:
                break
    return sorted(picked)


def clock(seconds: float) -> str:
    """``1:02.35``: minutes, seconds and hundredths, as editors read times."""
    minutes, rest = divmod(max(0.0, float(seconds)), 60.0)
    return f"{int(minutes)}:{rest:05.2f}"


def register(group: click.Group) -> None:
    group.add_command(audio)
