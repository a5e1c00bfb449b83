"""Bulk submission on SQLite and PostgreSQL: a large batch streamed into the database (one COPY
on PostgreSQL, statements of ``jobs.bulk.CHUNK`` rows on SQLite) gives exactly the rows and work
units of one written at once (ranks, batch keys, line references, waiting jobs, fingerprints,
estimates; every queued job in exactly one unit), reuse spans chunks, and a refusal or a
database error after thousands of rows were sent leaves nothing, on the broker either. Speed is
measured by benchmarks/submit.py, not here."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import func, select

from jobs import bulk, lifecycle
from jobs.budgets import set_budget
from jobs.errors import BudgetExceeded
from jobs.manifest import default_catalog, parse_manifest
from jobs.models import Batch, Job, JobEvent, Output, Project
from jobs.reuse import model_identity
from jobs.settings import Settings
from jobs.submit import SubmitResult, WorkUnit, submit

LARGE = [  # 20,000 jobs: two sizes and priorities, edits of a line, and a line that waits
    {"kind": "generate", "seed": {"range": [0, 12_000]}, "width": 64, "height": 64},
    {"kind": "generate", "seed": {"range": [0, 4_998]}, "width": 96, "height": 64,
     "priority": 5},
    {"kind": "generate", "seed": 1, "width": 64, "height": 64, "count": 2},
    {"kind": "edit", "op": "latent", "source": {"line": 3}, "strength": [1.0, 2.0]},
    {"kind": "noop", "tag": {"range": [0, 2_996]}, "after": [1]},
]


@pytest.fixture
def sessions(db_url: str):  # type: ignore[no-untyped-def]
    from jobs.db import make_engine, session_factory

    engine = make_engine(db_url)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture(scope="module")
def large_specs() -> list[Any]:
    return parse_manifest("\n".join(json.dumps(line) for line in LARGE))


def send(sessions: Any, specs: list[Any], publish: Any = None, **kwargs: Any) -> SubmitResult:
    catalog = default_catalog()
    settings = Settings(_env_file=None)
    return submit(sessions, "acme", specs, publish or (lambda units: None), unit_size=64,
                  catalog=catalog, identity=lambda model: model_identity(catalog, model, settings),
                  **kwargs)


def rows_of(sessions: Any, batch_id: str) -> list[tuple[Any, ...]]:
    """A batch's job rows with ids as positions, so two batches compare."""
    with sessions() as s:
        rows = s.execute(select(
            Job.id, Job.index, Job.line, Job.kind, Job.model, Job.queue, Job.params,
            Job.batch_key, Job.status, Job.priority, Job.rank, Job.created_at, Job.attempt,
            Job.max_attempts, Job.fingerprint, Job.estimate_seconds, Job.waits_on,
            Job.published_at, Job.reused_from, Job.progress)
            .where(Job.batch_id == batch_id).order_by(Job.index)).all()
    position = {r.id: r.index for r in rows}
    out = []
    for r in rows:
        params = dict(r.params)
        if "job" in params.get("source", {}):
            params["source"] = {**params["source"], "job": position[params["source"]["job"]]}
        waits = json.dumps(r.waits_on).replace(batch_id, "B")
        out.append((r.index, r.line, r.kind, r.model, r.queue, params, r.batch_key, r.status,
                    r.priority, round(r.created_at.timestamp() - r.rank, 3), r.attempt,
                    r.max_attempts, r.fingerprint, r.estimate_seconds, waits,
                    r.published_at is not None, r.reused_from, r.progress))
    return out


def units_of(sessions: Any, batch_id: str, units: list[WorkUnit]) -> list[tuple[Any, ...]]:
    with sessions() as s:
        position = dict(s.execute(select(Job.id, Job.index).where(Job.batch_id == batch_id)).all())
    assert all(u.batches == (batch_id,) for u in units)
    return sorted((u.queue, u.batch_key, u.priority, tuple(position[j] for j in u.job_ids))
                  for u in units)


def counts(sessions: Any) -> tuple[int, ...]:
    with sessions() as s:
        return tuple(s.scalar(select(func.count()).select_from(t))
                     for t in (Project, Batch, Job, Output, JobEvent))


def test_a_batch_in_chunks_is_the_batch_at_once(sessions: Any, large_specs: list[Any],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    results, sent = [], []
    for chunk in (10**9, 1_234):  # one chunk, then chunks that end mid-line and mid-unit
        monkeypatch.setattr(bulk, "CHUNK", chunk)
        units: list[WorkUnit] = []
        results.append(send(sessions, large_specs, units.extend))
        sent.append(units)
    whole, chunked = results
    assert whole.job_count == chunked.job_count == 20_000
    assert whole.units == chunked.units == len(sent[1]) and whole.published and chunked.published
    rows = rows_of(sessions, whole.batch_id)
    assert rows == rows_of(sessions, chunked.batch_id)
    assert units_of(sessions, whole.batch_id, sent[0]) == units_of(sessions, chunked.batch_id,
                                                                   sent[1])
    assert Counter(r[7] for r in rows) == {"queued": 17_004, "waiting": 2_996}
    assert {r[6] for r in rows if r[8] == 5} == {"generate:aether:96x64"}
    with sessions() as s:
        queued = set(s.scalars(select(Job.id).where(Job.batch_id == chunked.batch_id,
                                                    Job.status == "queued")))
    assert all(uuid.UUID(hex=j).version == 4 for j in queued)  # ids made in bulk: UUID4s too
    in_units = Counter(j for u in sent[1] for j in u.job_ids)
    assert set(in_units) == queued and set(in_units.values()) == {1}  # each in exactly one
    assert all(r[15] == (r[7] == "queued") for r in rows)  # published: the queued ones
    assert all(r[12] for r in rows) and all(r[13] > 0 for r in rows if r[2] != "noop")


def test_a_database_error_mid_insert_leaves_nothing(sessions: Any, large_specs: list[Any]
                                                    ) -> None:
    specs = list(large_specs)
    # a real constraint: batch_key is NOT NULL; job 13,000 is sent after 13,000 good rows (in
    # the third statement on SQLite)
    specs[13_000] = dataclasses.replace(specs[13_000], batch_key=None)
    assert bulk.CHUNK < 13_000
    units: list[WorkUnit] = []
    with pytest.raises(Exception, match=r"(?i)not.null"):
        submit(sessions, "acme", specs, units.extend, unit_size=64)
    assert counts(sessions) == (0, 0, 0, 0, 0) and units == []


def test_a_budget_refusal_of_a_large_batch_writes_and_sends_nothing(
        sessions: Any, large_specs: list[Any]) -> None:
    with sessions.begin() as s:
        set_budget(s, "acme", 10.0)  # 17,000 images at the benchmark figure: far more
    units: list[WorkUnit] = []
    with pytest.raises(BudgetExceeded):
        send(sessions, large_specs, units.extend)
    assert counts(sessions) == (1, 0, 0, 0, 0) and units == []  # the project the budget made


def test_reuse_spans_chunks(sessions: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    line = {"kind": "generate", "seed": {"range": [0, 20]}, "width": 64, "height": 64}
    first = send(sessions, parse_manifest(json.dumps(line)))
    with sessions.begin() as s:
        ids = list(s.scalars(select(Job.id).where(Job.batch_id == first.batch_id)))
        claimed = lifecycle.claim(s, ids, "w:1", 60)
        lifecycle.record(s, "w:1", [lifecycle.JobResult(c.id, [lifecycle.OutputRecord(
            "image.png", f"acme/{c.id}.png", c.id * 2, 100, "image/png")], 0.25)
            for c in claimed])
    monkeypatch.setattr(bulk, "CHUNK", 7)
    units: list[WorkUnit] = []
    again = send(sessions, parse_manifest(json.dumps({**line, "seed": {"range": [0, 25]}})),
                 units.extend)
    assert again.reused == 20 and sum(len(u.job_ids) for u in units) == 5
    with sessions() as s:
        new = s.execute(select(Job.id, Job.status, Job.reused_from, Job.estimate_seconds)
                        .where(Job.batch_id == again.batch_id).order_by(Job.index)).all()
        outputs = dict(s.execute(select(Output.job_id, Output.sha256)).all())
        events = Counter(s.scalars(select(JobEvent.job_id).where(
            JobEvent.reason.startswith("reused the outputs"))))
    assert [r.reused_from for r in new[:20]] == ids and all(r.reused_from is None
                                                              for r in new[20:])
    assert all(r.status == "succeeded" and r.estimate_seconds == 0.0 for r in new[:20])
    assert [outputs[r.id] for r in new[:20]] == [outputs[i] for i in ids]
    assert set(events) == {r.id for r in new[:20]} and set(events.values()) == {1}


def test_a_failed_publish_leaves_the_jobs_to_the_reconciler(sessions: Any) -> None:
    def down(units: Any) -> None:
        raise ConnectionError("broker down")

    specs = parse_manifest('{"kind": "noop", "tag": {"range": [0, 30]}}\n'
                           '{"kind": "noop", "tag": 1, "after": [1]}')
    result = send(sessions, specs, down)
    assert not result.published and "broker down" in (result.publish_error or "")
    with sessions() as s:
        due = lifecycle.due_unpublished(s, 300.0, 1000)
        marked = s.scalar(select(func.count()).where(Job.published_at.is_not(None)))
    assert len(due) == 30 and marked == 0  # at the next pass, not after republish_after_s
