"""Reuse: a job identical to one of the same project that already succeeded takes that job's
outputs at zero device seconds instead of running again.

Identical means the same *fingerprint*: the kind, the canonical params (references stand for
what they point at: a stored object by its sha256, a generated source by its params, never by
a job id), the model's entry in the models file (family, weights, pin, options), the settings
that choose weights and compute mode, and genfarm's version (the code that makes outputs).
A job that references a stored object whose sha256 is not known gets no fingerprint: it always
runs. Torch-free.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sqlalchemy import String, any_, cast, literal, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from jobs import __version__
from jobs.catalog import Catalog
from jobs.models import Batch, Job, Output
from jobs.registry import has_refs, select_schema, storage_refs
from jobs.states import JobStatus

# the settings that change which weights load or how outputs are computed
SETTINGS = ("model_profile", "checkpoint", "checkpoint_sha256", "exact_cpu")


def model_identity(catalog: Catalog, model: str, settings: Any) -> dict[str, Any]:
    """What decides the outputs of ``model`` besides a job's params."""
    entry = catalog.models[model]
    return {"model": model, "family": entry.family, "weights": entry.weights,
            "sha256": entry.sha256, "options": dict(entry.options),
            "settings": {name: str(getattr(settings, name, None)) for name in SETTINGS},
            "genfarm": __version__}


def fingerprint(catalog: Catalog, kind: str, params: Mapping[str, Any],
                identity: Mapping[str, Any]) -> str | None:
    """The sha256 of what makes a job's outputs, or None if it cannot be told (a reference to
    a stored object without its sha256)."""
    return fingerprints(catalog, lambda _model: identity, [(kind, params)])[0]


def fingerprints(catalog: Catalog, identity: Callable[[str], Mapping[str, Any]],
                 jobs: Iterable[tuple[str, Mapping[str, Any]]]) -> list[str | None]:
    """:func:`fingerprint` of each (kind, params) job, ``identity`` giving a model's identity:
    what is the same for all jobs of a kind and model (the schema, the identity's JSON) is
    worked out once, and params without references are hashed as they are."""
    # (kind, model) -> its schema, and the hash of the JSON text up to the params (its keys
    # sort kind, model, params)
    known: dict[tuple[str, str], tuple[Any, Any]] = {}
    out: list[str | None] = []
    for kind, params in jobs:
        model = str(params.get("model", ""))
        entry = known.get((kind, model))
        if entry is None:
            entry = known[kind, model] = (catalog.family(model).kinds[kind], hashlib.sha256(
                f'{{"kind":{_dumps(kind)},"model":{_dumps(identity(model))},"params":'.encode()))
        schema = select_schema(entry[0], params)
        if isinstance(schema, str):
            out.append(None)
            continue
        canonical = _canonical(params, schema) if has_refs(schema) else params
        if canonical is None:
            out.append(None)
            continue
        digest = entry[1].copy()
        digest.update(f"{_dumps(canonical)}}}".encode())
        out.append(digest.hexdigest())
    return out


_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode  # made once, not per job


def _canonical(params: Mapping[str, Any], schema: Any) -> dict[str, Any] | None:
    """``params`` with its references standing for what they point at (a stored object by its
    sha256, a generated source by its params), or None where that cannot be told."""
    canonical: dict[str, Any] = json.loads(json.dumps(params))  # a deep copy to rewrite
    for _path, node, _ref_type in storage_refs(canonical, schema):
        node.pop("job", None)
        node.pop("line", None)
        if "params" not in node and "sha256" not in node:
            return None
        if "sha256" in node:
            node.pop("key", None)  # the same bytes under another key are the same source
    return canonical


def reusable(session: Session, project: str, fingerprints: Iterable[str]
             ) -> dict[str, str]:
    """fingerprint -> id of the earliest succeeded job of ``project`` with it."""
    wanted = sorted(set(fingerprints))
    postgres = session.get_bind().dialect.name == "postgresql"
    size = 10_000 if postgres else 1000  # one array there (its text: sha256 hex needs no quotes)
    found: dict[str, str] = {}
    for i in range(0, len(wanted), size):
        part = wanted[i : i + size]
        array = literal("{" + ",".join(part) + "}", String())
        match = (Job.fingerprint == any_(cast(array, ARRAY(String)))
                 if postgres else Job.fingerprint.in_(part))
        rows = session.execute(
            select(Job.fingerprint, Job.id).join(Batch, Batch.id == Job.batch_id)
            .where(Batch.project == project, Job.status == JobStatus.SUCCEEDED, match)
            .order_by(Job.finished_at, Job.id))
        for fp, job_id in rows:
            found.setdefault(str(fp), job_id)
    return found


def outputs_of(session: Session, job_ids: Iterable[str]) -> dict[str, list[Output]]:
    ids = sorted(set(job_ids))
    out: dict[str, list[Output]] = {}
    for i in range(0, len(ids), 1000):
        for row in session.scalars(select(Output).where(Output.job_id.in_(ids[i : i + 1000]))
                                   .order_by(Output.job_id, Output.name)):
            out.setdefault(row.job_id, []).append(row)
    return out
