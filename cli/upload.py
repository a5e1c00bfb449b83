"""`genfarm upload`: plates, masks and audio put under a project, for manifests to reference."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import click

from cli.io import ByteSize, Refused, human_bytes, printable
from cli.options import friendly_errors, settings_options
from jobs.settings import Settings

MAX_FILE_BYTES = 1 << 30  # a file is read whole into memory, then stored in one request


@click.command("upload")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--project", "-p", required=True, help="Project the files belong to.")
@click.option("--prefix", default="in/", show_default=True,
              help="Folder of the project to put them in (e.g. in/plates/, audio/).")
@click.option("--max-bytes", type=ByteSize(), default=MAX_FILE_BYTES,
              help=f"Refuse a file larger than this [default: {human_bytes(MAX_FILE_BYTES)}].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: one object per file.")
@settings_options
@friendly_errors
def upload_command(settings: Settings, files: tuple[Path, ...], project: str, prefix: str,
                   max_bytes: int, as_json: bool) -> None:
    """Upload FILES into PROJECT's storage, each with its sha256, for manifests to use as
    sources (edit sources, masks, colour references, audio).

    \b
    Prints, per file, the key to give in a manifest, its sha256 and size:
      $ genfarm upload plate.png track.wav --project acme
      in/plate.png  sha256:9f86d0...  48213 bytes
      in/track.wav  sha256:2c26b4...  960044 bytes
    and then, in a manifest line:
      {"kind": "edit", "op": "image", "source": {"key": "in/plate.png"}, "ops": [{"blur": 1}]}
      {"kind": "video", "mode": "beats", "seed": 1, "audio": {"key": "in/track.wav"}}
    \b
    File names keep letters, digits, '.', '_' and '-' (other characters become '_'). Every
    file is checked before anything is stored: a missing file, a folder or a name that cannot
    be used stops them all. A file identical to the object already at its key (same sha256) is
    not sent again. A prefix may not start with a batch id: batch folders hold outputs.
    """
    from jobs.submit import check_project
    from storage import open_storage
    from storage.errors import BadKey
    from storage.uploads import upload, upload_key

    storage = open_storage(settings.resolved_storage_url(), endpoint_url=settings.s3_endpoint_url)
    try:
        check_project(project)
        upload_key(prefix, project, "x", storage.prefix)  # the prefix: said once, not per file
    except (BadKey, ValueError) as exc:  # InvalidProject is a ValueError
        raise Refused(f"{exc}; nothing was uploaded") from None
    keys: dict[str, Path] = {}
    problems = []
    for path in files:
        try:
            _check_file(path, max_bytes)
            key = upload_key(prefix, project, path.name, storage.prefix)
        except BadKey as exc:
            problems.append(f"{path}: {exc}")
            continue
        except Refused as exc:
            problems.append(exc.message)
            continue
        if key in keys:
            problems.append(f"{keys[key]} and {path} would both be stored as {key}")
        keys[key] = path
    if len(problems) == 1:
        raise Refused(f"{problems[0]}; nothing was uploaded")
    if problems:
        for problem in problems:
            click.echo(printable(problem), err=True)
        raise Refused(f"{len(problems)} problems with the files; nothing was uploaded")
    progress = sys.stderr.isatty() and not as_json
    results = []
    for n, (key, path) in enumerate(keys.items(), 1):
        data = path.read_bytes()
        if progress:
            click.echo(printable(f"[{n}/{len(keys)}] {path} -> {key} ({human_bytes(len(data))})"),
                       err=True)
        try:
            done = upload(storage, project, path.name, data, prefix)
        except BadKey as exc:  # a local folder's file in the way of a folder, or the reverse
            raise Refused(f"{path}: {exc} ({n - 1} file(s) uploaded before it)") from None
        results.append({"file": str(path), **done.as_dict()})
        if not as_json:
            note = "  (unchanged, not sent again)" if done.skipped else ""
            click.echo(printable(f"{done.key}  sha256:{done.sha256}  {done.bytes} bytes{note}"))
    if as_json:
        click.echo(json.dumps(results, indent=2))


def _check_file(path: Path, max_bytes: int) -> None:
    """Refuse what cannot be uploaded as one file: missing, a folder, a device or pipe."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise Refused(f"{path}: no such file") from None
    except OSError as exc:
        raise Refused(f"{path}: {exc.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        raise Refused(f"{path}: is a folder; give its files (e.g. {path}/*)")
    if not stat.S_ISREG(info.st_mode):
        raise Refused(f"{path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise Refused(f"{path}: not readable")
    if info.st_size > max_bytes:
        raise Refused(f"{path}: {info.st_size} bytes, over the {human_bytes(max_bytes)} limit "
                      "(--max-bytes raises it)")


def register(group: click.Group) -> None:
    group.add_command(upload_command)
