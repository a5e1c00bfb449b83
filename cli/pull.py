"""`genfarm pull`: a batch's outputs into a folder, verified, optionally named from their params."""

from __future__ import annotations

import hashlib
import re
import string
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import click

from cli.io import Refused, printable
from cli.options import friendly_errors, settings_options
from jobs.settings import Settings

# what a --name template may name besides the job's params
BUILTIN_FIELDS = ("index", "job", "batch", "kind", "model", "output", "ext")


@click.command()
@click.argument("batch")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", "template", default=None, metavar="TEMPLATE",
              help="Name each file from its job's params, e.g. '{seed}_{yaw}' or "
              "'{prompt}/{seed:04d}'; '/' makes folders. Also {index}, {job}, {kind}, "
              "{model}, {output} (the output's name) and {ext}; the extension is added "
              "unless the template has {ext}.")
@click.option("--sources/--no-sources", "with_sources", default=True, show_default=True,
              help="Also fetch what the batch's jobs read from storage (the music a beat-cut "
              "video was cut to), into DEST/sources/<its key in the project>: the folder "
              "`genfarm timeline` exports point into.")
@settings_options
@friendly_errors
def pull(settings: Settings, batch: str, dest: Path, template: str | None,
         with_sources: bool) -> None:
    """Download every output of BATCH into DEST, verifying each sha256.

    \b
    Files land at DEST/<job index>-<job id>/<name>, plus DEST/manifest.jsonl and the
    sources (audio) under DEST/sources/; with --name, at DEST/<the template filled in>:
      genfarm pull 3f2a9c ./review --name '{seed}_{yaw}'   # 7_30.0.png, 7_45.0.png ...
    Two jobs that would get the same name are refused before anything is fetched.
    Files already present with the right checksum are skipped.
    """
    from tqdm import tqdm

    from jobs.batches import batch_outputs, manifest_lines, resolve_batch
    from jobs.db import make_engine, session_factory
    from jobs.models import Job
    from jobs.timeline_media import batch_sources
    from storage import open_storage

    sessions = session_factory(make_engine(settings.resolved_database_url()))
    storage = open_storage(settings.resolved_storage_url(), endpoint_url=settings.s3_endpoint_url)
    with sessions() as session:
        b = resolve_batch(session, batch)
        outputs = batch_outputs(session, b.id)
        manifest = manifest_lines(session, b.id)
        jobs = {j.id: j for j in session.query(Job).filter(Job.batch_id == b.id)} \
            if template else {}
        sources = batch_sources(session, storage, b.id) if with_sources else []
    paths = (named_paths(template, b.id, outputs, jobs) if template
             else default_paths(outputs))
    wanted: list[tuple[str, str | None, PurePosixPath]] = [
        (out.key, out.sha256, rel) for (_, _, out), rel in zip(outputs, paths, strict=True)]
    taken = {rel for _, _, rel in wanted}
    for src in sources:
        if src.path in taken:
            raise Refused(f"--name {template!r} gives {str(src.path)!r}, where the source "
                          f"{src.key} goes; pick another template, or --no-sources")
        wanted.append((src.key, src.sha256, src.path))
    dest.mkdir(parents=True, exist_ok=True)
    fetched = skipped = 0
    for key, sha256, rel in tqdm(wanted, unit="file", file=sys.stderr, dynamic_ncols=True,
                                 disable=None):
        path = dest.joinpath(*rel.parts)
        if sha256 and path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == sha256:
            skipped += 1
            continue
        data = storage.get(key, sha256=sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)
        fetched += 1
    (dest / "manifest.jsonl").write_bytes(manifest)
    unchecked = sum(1 for src in sources if not src.sha256)
    said = f" ({len(outputs)} outputs, {len(sources)} sources)" if sources else ""
    click.echo(printable(f"{fetched} downloaded, {skipped} already present{said}, all sha256 "
                         "verified" + (f" ({unchecked} sources have none recorded)"
                                       if unchecked else "") + f" -> {dest}"))


def default_paths(outputs: list[tuple[str, int, Any]]) -> list[PurePosixPath]:
    from jobs.timeline_media import pulled_path

    return [pulled_path(index, job_id, out.name) for job_id, index, out in outputs]


def named_paths(template: str, batch_id: str, outputs: list[tuple[str, int, Any]],
                jobs: dict[str, Any]) -> list[PurePosixPath]:
    """Each output's path under DEST from ``template``: every folder and file name sanitized
    (nothing leaves DEST, whatever a param holds); two outputs of one name are refused."""
    fields = _fields(template)
    per_job: dict[str, int] = {}
    for job_id, _, _ in outputs:
        per_job[job_id] = per_job.get(job_id, 0) + 1
    taken: dict[PurePosixPath, int] = {}
    paths = []
    for job_id, index, out in outputs:
        job = jobs[job_id]
        stem, _, ext = out.name.rpartition(".") if "." in out.name else (out.name, "", "")
        values = {**{k: v for k, v in job.params.items() if k not in BUILTIN_FIELDS},
                  "index": index, "job": job_id, "batch": batch_id, "kind": job.kind,
                  "model": job.model, "output": stem, "ext": ext}
        missing = [f for f in fields if f not in values]
        if missing:
            known = ", ".join(sorted(set(values) - {"batch"}))
            raise Refused(f"--name {template!r}: job #{index} has no {missing[0]!r} "
                          f"(it has {known})")
        text = _render(template, values, index)
        if per_job[job_id] > 1 and "output" not in fields:  # a video and its frames, say
            text += f"_{stem}"
        if ext and "ext" not in fields:
            text += f".{ext}"
        path = _safe_path(text)
        if path in taken:
            raise Refused(f"--name {template!r} gives {str(path)!r} to jobs #{taken[path]} and "
                          f"#{index}; add a field that differs between them, e.g. {{index}}")
        taken[path] = index
        paths.append(path)
    return paths


def _fields(template: str) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise Refused(f"--name {template!r}: {exc} (write fields as {{seed}}, literal braces "
                      "as {{ and }})") from None
    fields = []
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if not name or not name.isidentifier():
            raise Refused(f"--name {template!r}: {{{name}}} is not a field; name one, e.g. "
                          "{seed}")
        fields.append(name)
    return fields


def _render(template: str, values: dict[str, Any], index: int) -> str:
    try:
        return template.format_map(values)
    except (ValueError, TypeError) as exc:
        raise Refused(f"--name {template!r}: job #{index}: {exc}") from None


def _safe_path(text: str) -> PurePosixPath:
    """Folders and a file name of letters, digits and ``._=+-`` (anything else becomes '_'):
    no '..', no hidden or absolute path, no empty part, each part at most 100 characters."""
    parts = []
    for part in text.replace("\\", "/").split("/"):
        part = re.sub(r"\.{2,}", "_", re.sub(r"[^A-Za-z0-9._=+-]+", "_", part.strip()))
        part = part.lstrip(".")[:100]
        if part:
            parts.append(part)
    return PurePosixPath(*parts) if parts else PurePosixPath("_")


def register(group: click.Group) -> None:
    group.add_command(pull)
