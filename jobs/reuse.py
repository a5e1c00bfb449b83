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
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs import __version__
from jobs.catalog import Catalog
from jobs.models import Batch, Job, Output
from jobs.registry import select_schema, storage_refs
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
    family = catalog.family(str(params.get("model", "")))
    schema = select_schema(family.kinds[kind], params)
    if isinstance(schema, str):
        return None
    canonical = json.loads(json.dumps(params))  # a deep copy to rewrite the references in
    for _path, node, _ref_type in storage_refs(canonical, schema):
        node.pop("job", None)
        node.pop("line", None)
        if "params" not in node and "sha256" not in node:
            return None
        if "sha256" in node:
            node.pop("key", None)  # the same bytes under another key are the same source
    text = json.dumps({"kind": kind, "params": canonical, "model": identity},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def reusable(session: Session, project: str, fingerprints: Iterable[str]
             ) -> dict[str, str]:
    """fingerprint -> id of the earliest succeeded job of ``project`` with it."""
    wanted = sorted(set(fingerprints))
    found: dict[str, str] = {}
    for i in range(0, len(wanted), 1000):
        rows = session.execute(
            select(Job.fingerprint, Job.id).join(Batch, Batch.id == Job.batch_id)
            .where(Batch.project == project, Job.status == JobStatus.SUCCEEDED,
                   Job.fingerprint.in_(wanted[i : i + 1000]))
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
