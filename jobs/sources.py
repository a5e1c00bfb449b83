"""Resolving storage references at submission: every field typed ``SourceRef`` (an edit's
source, a mask, a colour reference, a video's audio, any field a family adds) resolves inside the
caller's project, here and nowhere else. A refusal reads the same whether or not an object of that
name exists in another project: nothing outside the project is ever looked up."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs.catalog import Catalog
from jobs.errors import LineError, ManifestError
from jobs.manifest_common import JobSpec
from jobs.manifest_fields import own_path
from jobs.models import Batch, Job, Output
from jobs.registry import (
    AudioRef,
    GeneratedRef,
    JobOutputRef,
    SourceRef,
    has_refs,
    select_schema,
    storage_refs,
)

AUDIO_MAGIC = (b"RIFF", b"ID3", b"OggS", b"fLaC", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2")


class Objects(Protocol):
    @property
    def prefix(self) -> str: ...

    def exists(self, key: str) -> bool: ...
    def get(self, key: str, sha256: str | None = None) -> bytes: ...
    def read_head(self, key: str, size: int) -> bytes: ...


def project_keys(prefix: str, project: str, key: str) -> list[str]:
    """The full storage keys a user's key may mean, all inside ``project``: relative to the
    project's folder (``in/plate.png``, ``BATCH/JOB/image.png``), or the key of one of its
    objects as genfarm shows them (``[prefix/]project/...``). Raises ValueError for keys that would leave it (``..``, empty
    parts, control characters)."""
    from storage.keys import join

    keys = [join(prefix, project, *key.strip("/").split("/"))]
    for root in (join(prefix, project) + "/", f"{project}/"):  # a full key, or one without prefix
        if key.startswith(root):
            keys.insert(0, join(prefix, project, *key[len(root):].split("/")))
    return list(dict.fromkeys(keys))


def resolve_sources(specs: list[JobSpec], session: Session, project: str, objects: Objects,
                    catalog: Catalog, source: str = "manifest") -> list[JobSpec]:
    """Fill in the keys and params of ``job`` and ``key`` references; raise naming bad lines."""
    errors: list[LineError] = []
    out: list[JobSpec] = []
    resolver = _Resolver(session, project, objects)
    batches: dict[str, str | LineError] = {}
    for spec in specs:
        if spec.after_batches:  # ids or prefixes of this project's batches, made whole
            whole = []
            for ident in spec.after_batches:
                if ident not in batches:
                    batches[ident] = _batch_id(session, project, ident, spec.line)
                found = batches[ident]
                if isinstance(found, LineError):
                    errors.append(LineError(spec.line, found.field, found.message))
                else:
                    whole.append(found)
            spec = dataclasses.replace(spec, after_batches=tuple(whole))
        family = catalog.family(spec.params["model"])
        schema = select_schema(family.kinds[spec.kind], spec.params)
        assert not isinstance(schema, str)  # validated already
        if not has_refs(schema):
            out.append(spec)
            continue
        refs = [r for r in storage_refs(spec.params, schema) if "line" not in r[1]]
        if not refs:
            out.append(spec)
            continue
        params = dict(spec.params)
        for path, _, ref_type in refs:
            node = own_path(params, path)
            problem = resolver.resolve(node, ref_type, spec.params["model"],
                                       family.generated_kind)
            if problem:
                errors.append(LineError(spec.line, path, problem))
            elif (path == "source" and issubclass(ref_type, GeneratedRef)
                  and "width" in schema.model_fields and "params" in node):
                params.setdefault("width", node["params"].get("width"))
                params.setdefault("height", node["params"].get("height"))
        out.append(dataclasses.replace(spec, params=params,
                                       batch_key=family.batch_key(spec.kind, params)))
    if errors:
        raise ManifestError(list(dict.fromkeys(errors)), source)
    return out


def _batch_id(session: Session, project: str, ident: str, line: int) -> str | LineError:
    from jobs.batches import resolve_batch
    from jobs.errors import NotFound

    try:
        return resolve_batch(session, ident, project=project).id
    except NotFound as exc:
        return LineError(line, "after", f"{exc} in this project")


class _Resolver:
    """Resolves references with one lookup per distinct reference."""

    def __init__(self, session: Session, project: str, objects: Objects) -> None:
        self.session, self.project, self.objects = session, project, objects
        self.cache: dict[tuple[Any, ...], tuple[dict[str, Any], str | None]] = {}

    def resolve(self, node: dict[str, Any], ref_type: type[SourceRef], model: str,
                generated: str | None) -> str | None:
        ident = ("job", node["job"], ref_type, model) if node.get("job") else (
            "key", node.get("key"), ref_type)
        if ident not in self.cache:
            found: dict[str, Any] = {}
            problem = (self._job(node["job"], ref_type, model, generated, found) if node.get("job")
                       else self._key(str(node.get("key")), ref_type, found))
            self.cache[ident] = (found, problem)
        found, problem = self.cache[ident]
        node.update(found)
        return problem

    def _job(self, job_id: str, ref_type: type[SourceRef], model: str, generated: str | None,
             found: dict[str, Any]) -> str | None:
        row = self.session.execute(
            select(Job).join(Batch, Batch.id == Job.batch_id)
            .where(Job.id == job_id, Batch.project == self.project)).scalar()
        if row is None:
            return f"source job {job_id} does not exist in this project"
        if row.status != "succeeded":
            return f"source job {job_id} has not succeeded (it is {row.status})"
        if issubclass(ref_type, JobOutputRef):
            return self._output(row, ref_type, found)
        if issubclass(ref_type, GeneratedRef):
            if generated is None or row.kind != generated or row.model != model:
                return (f"source job {job_id} is a {row.kind} job of model {row.model}; this "
                        f"edits a generated object, so it needs a {generated} job of model "
                        f"{model}" if generated else f"model {model} edits no generated objects")
            found["params"] = row.params
        image = self.session.scalar(
            select(Output).where(Output.job_id == row.id, Output.content_type.like("image/%"))
            .order_by(Output.name))
        if image is not None:
            found["key"], found["sha256"] = image.key, image.sha256
        elif "params" not in found:
            return f"source job {job_id} has no image output"
        return None

    def _output(self, row: Job, ref_type: type[JobOutputRef], found: dict[str, Any]) -> str | None:
        if row.kind != ref_type.of_kind:
            return (f"source job {row.id} is a {row.kind} job; this takes the "
                    f"{ref_type.output} of {ref_type.of_kind} jobs")
        out = self.session.scalar(select(Output).where(Output.job_id == row.id,
                                                       Output.name == ref_type.output))
        if out is None:
            return f"source job {row.id} has no {ref_type.output} output"
        found["key"], found["sha256"] = out.key, out.sha256
        return None

    def _key(self, key: str, ref_type: type[SourceRef], found: dict[str, Any]) -> str | None:
        missing = f"no object {key!r} in this project's storage"
        try:
            candidates = project_keys(self.objects.prefix, self.project, key)
        except ValueError:
            return missing
        full = next((k for k in candidates if self.objects.exists(k)), None)
        if full is None:
            return missing
        if issubclass(ref_type, AudioRef):
            head = self.objects.read_head(full, 12)  # never the whole (maybe huge) file
            if not (head.startswith(AUDIO_MAGIC) or head[4:8] == b"ftyp"):
                return f"{key!r} is not an audio file (WAV, MP3, Ogg, FLAC or M4A)"
        found["key"] = full
        return None


def batch_sources(sessions: Any, project: str) -> Any:
    """What a batch source of ``project`` stands for: ``{"batch": ID, "where": {...}}`` is one
    job source per succeeded job of that finished batch (in its order) whose params (or kind)
    match every ``where`` entry (a value, or a list of accepted values)."""
    from jobs.batches import resolve_batch
    from jobs.errors import NotFound
    from jobs.manifest_common import MAX_JOBS

    def expand(ident: Any, where: Any) -> list[dict[str, Any]] | str:
        if not isinstance(ident, str):
            return "batch: expected a batch id or a prefix of 6+ characters"
        if where is not None and not isinstance(where, dict):
            return "where: expected an object of param: value (or [values])"
        with sessions() as session:
            try:
                batch = resolve_batch(session, ident, project=project)
            except NotFound as exc:
                return f"{exc} in this project"
            if batch.finished_at is None:
                return (f"batch {batch.id} has not finished: a batch source takes the succeeded "
                        "jobs of a finished batch (submit this once it has)")
            rows = session.execute(
                select(Job.id, Job.kind, Job.params)
                .where(Job.batch_id == batch.id, Job.status == "succeeded")
                .order_by(Job.index).limit(MAX_JOBS + 1)).all()
        picked = [{"job": job_id} for job_id, kind, params in rows
                  if _matches(kind, params, where or {})]
        if not picked:
            return (f"batch {batch.id} has no succeeded job"
                    + (" matching where" if where else ""))
        return picked

    return expand


def _matches(kind: str, params: dict[str, Any], where: dict[str, Any]) -> bool:
    for name, wanted in where.items():
        have = kind if name == "kind" else params.get(name)
        if not (have in wanted if isinstance(wanted, list) else have == wanted):
            return False
    return True
