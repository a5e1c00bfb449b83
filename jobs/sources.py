"""Resolving where edits and videos start, at submission: a finished job of the same project,
or an object in storage. Every problem is a manifest error on the line that named it."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs.errors import LineError, ManifestError
from jobs.kinds import KINDS
from jobs.manifest import JobSpec, get_path
from jobs.models import Batch, Job, Output

AUDIO_MAGIC = (b"RIFF", b"ID3", b"OggS", b"fLaC", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2")


class Objects(Protocol):
    prefix: str

    def exists(self, key: str) -> bool: ...
    def get(self, key: str, sha256: str | None = None) -> bytes: ...


def _refs(params: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for name in ("source", "audio"):
        if isinstance(params.get(name), dict):
            found.append((name, params[name]))
    for i, op in enumerate(params.get("ops") or []):
        if isinstance(op.get("color_transfer"), dict):
            found.append((f"ops.{i}.color_transfer", op["color_transfer"]))
    return found


def resolve_sources(specs: list[JobSpec], session: Session, project: str,
                    objects: Objects) -> list[JobSpec]:
    """Fill in the params and keys of ``job`` and ``key`` references; raise naming bad lines."""
    errors: list[LineError] = []
    out = []
    for spec in specs:
        refs = [(path, ref) for path, ref in _refs(spec.params) if "line" not in ref]
        if not refs:
            out.append(spec)
            continue
        params = copy.deepcopy(spec.params)
        for path, _ in refs:
            node = get_path(params, path)
            problem = (_resolve_job(session, project, node, spec.params) if node.get("job")
                       else _resolve_key(objects, node, audio=path == "audio"))
            if problem:
                errors.append(LineError(spec.line, path, problem))
        if spec.kind == "edit" and params.get("op") != "image" and "params" in params["source"]:
            params.setdefault("width", params["source"]["params"].get("width"))
            params.setdefault("height", params["source"]["params"].get("height"))
        out.append(dataclasses.replace(spec, params=params,
                                       batch_key=KINDS[spec.kind].batch_key(params)))
    if errors:
        raise ManifestError(list(dict.fromkeys(errors)), "manifest")
    return out


def _resolve_job(session: Session, project: str, node: dict[str, Any],
                 params: dict[str, Any]) -> str | None:
    row = session.execute(select(Job).join(Batch, Batch.id == Job.batch_id)
                          .where(Job.id == node["job"], Batch.project == project)).scalar()
    if row is None:
        return f"source job {node['job']} does not exist in this project"
    if row.status != "succeeded":
        return f"source job {node['job']} has not succeeded (it is {row.status})"
    image = session.scalar(select(Output).where(Output.job_id == row.id, Output.name == "image.png"))
    if row.kind == "generate":
        node["params"] = row.params
    elif params.get("op") != "image" and node is params.get("source"):
        return f"source job {node['job']} is a {row.kind} job; latent edits need a generate job"
    if image is not None:
        node["key"], node["sha256"] = image.key, image.sha256
    elif "params" not in node:
        return f"source job {node['job']} has no image output"
    return None


def _resolve_key(objects: Objects, node: dict[str, Any], audio: bool) -> str | None:
    from storage.keys import join

    try:
        key = join(objects.prefix, *node["key"].strip("/").split("/"))
    except ValueError as exc:
        return str(exc)
    if not objects.exists(key):
        return f"no object {node['key']!r} in storage"
    if audio:
        head = objects.get(key)[:12]
        if not (head.startswith(AUDIO_MAGIC) or head[4:8] == b"ftyp"):
            return f"{node['key']!r} is not an audio file (WAV, MP3, Ogg, FLAC or M4A)"
    node["key"] = key
    return None
