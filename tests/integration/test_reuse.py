"""Reuse on SQLite and PostgreSQL: a job identical to a succeeded job of the same project takes
its outputs (same keys and checksums, zero device seconds, no message); anything that changes
the outputs (a param, the model's entry or weights settings, a source's bytes) runs again, as
does everything under force; another project never sees the first one's jobs."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import select

from jobs import lifecycle
from jobs.catalog import Catalog
from jobs.manifest import default_catalog, parse_manifest
from jobs.models import Job, JobEvent, Output
from jobs.reuse import model_identity
from jobs.settings import Settings
from jobs.submit import WorkUnit, submit

GENERATE = {"kind": "generate", "seed": {"range": [0, 4]}, "width": 64, "height": 64}
EDIT = {"kind": "edit", "op": "latent", "source": {"line": 1}, "strength": 2.0}


@pytest.fixture
def sessions(db_url: str):  # type: ignore[no-untyped-def]
    from jobs.db import make_engine, session_factory

    engine = make_engine(db_url)
    yield session_factory(engine)
    engine.dispose()


def send(sessions: Any, *lines: dict[str, Any], project: str = "acme", force: bool = False,
         catalog: Catalog | None = None, settings: Settings | None = None
         ) -> tuple[Any, list[WorkUnit]]:
    catalog = catalog or default_catalog()
    settings = settings or Settings(_env_file=None)
    units: list[WorkUnit] = []
    specs = parse_manifest("\n".join(json.dumps(line) for line in lines), catalog=catalog)
    result = submit(sessions, project, specs, units.extend, unit_size=64, catalog=catalog,
                    identity=lambda model: model_identity(catalog, model, settings), force=force)
    return result, units


def run_all(sessions: Any, batch_id: str) -> None:
    """What a worker records: each job succeeds with one output of its own."""
    with sessions.begin() as s:
        ids = list(s.scalars(select(Job.id).where(Job.batch_id == batch_id,
                                                  Job.status == "queued")))
        claimed = lifecycle.claim(s, ids, "w:1", 60)
        lifecycle.record(s, "w:1", [lifecycle.JobResult(
            c.id, [lifecycle.OutputRecord("image.png", f"acme/{batch_id}/{c.id}/image.png",
                                          c.id * 2, 100, "image/png")], 0.25) for c in claimed])


def jobs(sessions: Any, batch_id: str) -> list[Job]:
    with sessions() as s:
        return list(s.scalars(select(Job).where(Job.batch_id == batch_id).order_by(Job.index)))


def test_a_rerun_reuses_every_output_at_no_device_time(sessions: Any) -> None:
    first, _ = send(sessions, GENERATE, EDIT)
    run_all(sessions, first.batch_id)
    again, units = send(sessions, GENERATE, EDIT)
    assert again.reused == again.job_count == 8 and units == [] and again.units == 0
    old, new = jobs(sessions, first.batch_id), jobs(sessions, again.batch_id)
    assert [j.reused_from for j in new] == [j.id for j in old]
    assert all(j.status == "succeeded" and j.device_seconds == 0.0 for j in new)
    with sessions() as s:
        outs = {o.job_id: (o.key, o.sha256) for o in s.scalars(select(Output))}
        reasons = {e.job_id: e.reason for e in s.scalars(select(JobEvent))}
    assert [outs[j.id] for j in new] == [outs[j.id] for j in old]
    assert reasons[new[0].id] == f"reused the outputs of job {old[0].id}"
    # one param changed: that job runs, the rest is reused
    changed, units = send(sessions, {**GENERATE, "seed": [0, 1, 2, 9]})
    assert changed.reused == 3 and sum(len(u.job_ids) for u in units) == 1
    # force runs everything
    forced, units = send(sessions, GENERATE, EDIT, force=True)
    assert forced.reused == 0 and sum(len(u.job_ids) for u in units) == 8


def test_another_project_never_reuses_a_project_s_jobs(sessions: Any) -> None:
    first, _ = send(sessions, GENERATE)
    run_all(sessions, first.batch_id)
    other, units = send(sessions, GENERATE, project="other")
    assert other.reused == 0 and sum(len(u.job_ids) for u in units) == 4


def test_what_changes_outputs_changes_the_fingerprint(sessions: Any) -> None:
    first, _ = send(sessions, GENERATE)
    run_all(sessions, first.batch_id)
    tiny = Settings(_env_file=None, model_profile="tiny")
    assert send(sessions, GENERATE, settings=tiny)[0].reused == 0  # other weights load
    builtin = default_catalog()
    pinned = Catalog(builtin.registry, {**builtin.models, "aether": replace(
        builtin.models["aether"], sha256="0" * 64)}, builtin.defaults)
    assert send(sessions, GENERATE, catalog=pinned)[0].reused == 0  # another models-file entry
    assert send(sessions, GENERATE)[0].reused == 4  # the same again: reused


def test_a_stored_source_is_known_by_its_checksum_not_its_key(sessions: Any) -> None:
    catalog = default_catalog()
    identity = model_identity(catalog, "aether", Settings(_env_file=None))
    from jobs.reuse import fingerprint

    edit = {"model": "aether", "op": "image", "ops": [{"flip": "horizontal"}]}
    plain = fingerprint(catalog, "edit", {**edit, "source": {"key": "in/a.png"}}, identity)
    assert plain is None  # its bytes are not known: it always runs
    one = fingerprint(catalog, "edit", {**edit, "source": {"key": "in/a.png", "sha256": "1" * 64,
                                                           "job": "f" * 32}}, identity)
    same = fingerprint(catalog, "edit", {**edit, "source": {"key": "b/c.png", "sha256": "1" * 64,
                                                            "job": "e" * 32}}, identity)
    other = fingerprint(catalog, "edit", {**edit, "source": {"key": "in/a.png",
                                                             "sha256": "2" * 64}}, identity)
    assert one == same != other and one is not None
