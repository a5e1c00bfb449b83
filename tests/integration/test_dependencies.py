"""Dependencies on SQLite and PostgreSQL: a line that waits (``after``) for other lines of its
manifest or for whole batches sits in ``waiting`` until they succeed, then is queued and
published; when one of them fails or is cancelled it fails "upstream failed". Wrong references
and cycles are validation errors naming the line; a batch of another project is not found."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from jobs import lifecycle
from jobs.batches import finalize_if_done
from jobs.errors import ManifestError
from jobs.manifest import default_catalog, parse_manifest
from jobs.models import Job, JobEvent
from jobs.sources import resolve_sources
from jobs.submit import Submitter, WorkUnit, submit
from storage import open_storage


@pytest.fixture
def sessions(db_url: str):  # type: ignore[no-untyped-def]
    from jobs.db import make_engine, session_factory

    engine = make_engine(db_url)
    yield session_factory(engine)
    engine.dispose()


def send(sessions: Any, *lines: dict[str, Any], project: str = "acme"
         ) -> tuple[str, list[WorkUnit]]:
    catalog = default_catalog()
    specs = parse_manifest("\n".join(json.dumps(line) for line in lines), catalog=catalog)
    with sessions() as s:
        specs = resolve_sources(specs, s, project, None, catalog)  # type: ignore[arg-type]
    units: list[WorkUnit] = []
    result = submit(sessions, project, specs, units.extend, unit_size=64, catalog=catalog)
    return result.batch_id, units


def by_line(sessions: Any, batch_id: str) -> dict[int, list[str]]:
    with sessions() as s:
        rows = s.execute(select(Job.line, Job.status).where(Job.batch_id == batch_id)
                         .order_by(Job.index)).all()
    out: dict[int, list[str]] = {}
    for line, status in rows:
        out.setdefault(line, []).append(status)
    return out


def finish(sessions: Any, ids: list[str], ok: bool = True) -> None:
    with sessions.begin() as s:
        claimed = lifecycle.claim(s, ids, "w:1", 60)
        lifecycle.record(s, "w:1", [lifecycle.JobResult(c.id, [], 0.1) if ok else
                                    lifecycle.JobResult(c.id, error="drill", retryable=True)
                                    for c in claimed])


NOOP = {"kind": "noop", "tag": {"range": [0, 3]}}


def test_a_line_waits_for_the_lines_it_names_then_runs(sessions: Any) -> None:
    batch, units = send(sessions, NOOP, {**NOOP, "after": [1]}, {**NOOP, "after": [1, 2]})
    assert by_line(sessions, batch) == {1: ["queued"] * 3, 2: ["waiting"] * 3,
                                        3: ["waiting"] * 3}
    assert sum(len(u.job_ids) for u in units) == 3  # only line 1 is published
    finish(sessions, units[0].job_ids[:2])
    with sessions.begin() as s:
        assert lifecycle.release_waiting(s) == ([], 0)  # one job of line 1 is still queued
    finish(sessions, units[0].job_ids[2:])
    with sessions.begin() as s:
        released, failed = lifecycle.release_waiting(s)
    assert failed == 0 and len(released) == 3  # line 2 only: line 3 also waits for line 2
    assert by_line(sessions, batch)[2] == ["queued"] * 3
    finish(sessions, [r[0] for r in released])
    with sessions.begin() as s:
        assert len(lifecycle.release_waiting(s)[0]) == 3
    with sessions() as s:
        reasons = set(s.scalars(select(JobEvent.reason).where(JobEvent.to_status == "queued")))
    assert reasons == {"its parents succeeded"}


def test_a_failed_parent_fails_its_dependents_upstream(sessions: Any) -> None:
    batch, units = send(sessions, NOOP, {**NOOP, "after": [1]}, {"kind": "noop", "after": [2]})
    finish(sessions, units[0].job_ids[:1], ok=False)  # a retryable error: requeued, pending
    with sessions.begin() as s:
        assert lifecycle.release_waiting(s) == ([], 0)
    with sessions.begin() as s:
        s.execute(Job.__table__.update().where(Job.id == units[0].job_ids[0])
                  .values(status="failed"))  # ... until its attempts run out
        released, failed = lifecycle.release_waiting(s)
    assert (released, failed) == ([], 3)
    with sessions() as s:
        errors = set(s.scalars(select(Job.error).where(Job.batch_id == batch, Job.line == 2)))
    assert errors == {f"upstream failed: line 1 of batch {batch} has 1 failed"}
    with sessions.begin() as s:  # and so on down the chain
        assert lifecycle.release_waiting(s) == ([], 1)
    assert by_line(sessions, batch)[3] == ["failed"]


def test_a_line_waits_for_whole_batches_of_its_project(sessions: Any) -> None:
    first, units = send(sessions, NOOP)
    second, none = send(sessions, {"kind": "noop", "after": [first[:8]]})
    assert none == [] and by_line(sessions, second) == {1: ["waiting"]}
    finish(sessions, units[0].job_ids)
    with sessions.begin() as s:
        assert len(lifecycle.release_waiting(s)[0]) == 1
    with pytest.raises(ManifestError) as info:  # another project's batch does not exist here
        send(sessions, {"kind": "noop", "after": [first]}, project="other")
    [error] = info.value.errors
    assert (error.line, error.field) == (1, "after") and "in this project" in error.message


def test_a_ready_job_is_released_whatever_its_place_among_more_waiting_than_a_look_reads(
        sessions: Any) -> None:
    """A look at waiting jobs reads a window of them (10,000 by default) in id order from a
    random id, wrapping around: a window from fixed ids read the same jobs at every look, and a
    job ready beyond them waited for all of them."""
    parent, _ = send(sessions, NOOP)  # never finishes: 30 jobs wait on it
    send(sessions, {"kind": "noop", "tag": {"range": [0, 30]}, "after": [parent[:8]]})
    done, units = send(sessions, NOOP)
    child, _ = send(sessions, {"kind": "noop", "after": [done[:8]]})
    finish(sessions, units[0].job_ids)
    with sessions() as s:
        [ready] = s.scalars(select(Job.id).where(Job.batch_id == child))
        pending = sorted(s.scalars(select(Job.id).where(Job.status == "waiting",
                                                        Job.batch_id != child)))
    assert len(pending) == 30
    with sessions.begin() as s:  # a window reads from its start on: here one pending job
        assert lifecycle.release_waiting(s, limit=1, start=pending[0]) == ([], 0)
    released: list[Any] = []
    for _ in range(60):  # windows of 10 of 31: each misses the ready job 2 times in 3
        with sessions.begin() as s:
            released += lifecycle.release_waiting(s, limit=10)[0]
        if released:
            break
    assert [r[0] for r in released] == [ready]
    send(sessions, {"kind": "noop", "after": [done[:8]]})  # one more ready job
    with sessions.begin() as s:  # a window from past the last id wraps around to the first
        assert len(lifecycle.release_waiting(s, limit=31, start="g")[0]) == 1


def test_cancel_takes_waiting_jobs_too(sessions: Any) -> None:
    batch, _ = send(sessions, NOOP, {**NOOP, "after": [1]})
    with sessions.begin() as s:
        assert lifecycle.cancel(s, Job.batch_id == batch) == 6


@pytest.mark.parametrize(("lines", "errors"), [
    ([NOOP, {**NOOP, "after": [3]}], [(2, "line 3 is not a job line of this manifest")]),
    ([{**NOOP, "after": [1]}], [(1, "line 1 cannot wait for itself")]),
    ([{**NOOP, "after": [2]}, {**NOOP, "after": [1]}],
     [(1, "waits for itself through lines 1 -> 2 -> 1"),
      (2, "waits for itself through lines 1 -> 2 -> 1")]),
    ([NOOP, {**NOOP, "after": ["not a batch"]}],
     [(2, 'expected line numbers of this manifest or batch ids (6 to 32 letters and digits), '
          'got "not a batch"')]),
    ([{"kind": "noop", "seed": 1}, {**NOOP, "after": [1]}],
     [(1, "unknown field; noop jobs of noop take model, payload_bytes, tag, fail, oom_above"),
      (2, "line 1 has errors")]),
])
def test_wrong_references_and_cycles_name_their_lines(lines: list[Any],
                                                      errors: list[tuple[int, str]]) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest("\n".join(json.dumps(line) for line in lines))
    assert [(e.line, e.message) for e in info.value.errors] == errors


def test_a_line_may_wait_for_a_later_one() -> None:
    specs = parse_manifest("\n".join(json.dumps(x) for x in [{**NOOP, "after": [2]}, NOOP]))
    assert {s.line: s.after for s in specs} == {1: (2,), 2: ()}


# -- sources that sweep: a list of sources, or a whole batch -----------------------------------
GENERATE = {"kind": "generate", "seed": {"range": [0, 6]}, "width": 32, "height": 32}


def run_batch(sessions: Any, tmp_path: Path, *lines: dict[str, Any],
              project: str = "acme") -> tuple[str, list[str]]:
    """A batch whose jobs all succeeded and which is finished: (its id, its job ids)."""
    batch, units = send(sessions, *lines, project=project)
    ids = [j for u in units for j in u.job_ids]
    finish(sessions, ids)
    assert finalize_if_done(sessions, open_storage(tmp_path.as_uri()), batch) == "succeeded"
    with sessions() as s:
        return batch, list(s.scalars(select(Job.id).where(Job.batch_id == batch)
                                     .order_by(Job.index)))


def through_submitter(sessions: Any, *lines: dict[str, Any], project: str = "acme") -> list[Any]:
    """Validated and resolved as submission does it (batch sources need the database)."""
    submitter = Submitter(sessions, lambda units: None, default_catalog(), objects=lambda: None)
    text = "\n".join(json.dumps(line) for line in lines)
    return submitter.resolve(project, submitter.parse(text, project=project), "manifest")


def test_a_list_of_sources_sweeps_over_them(sessions: Any, tmp_path: Path) -> None:
    _, ids = run_batch(sessions, tmp_path, GENERATE)
    specs = through_submitter(sessions, {"kind": "edit", "op": "latent", "strength": [1.0, 2.0],
                                         "source": [{"job": ids[0]}, {"job": ids[4]}]})
    assert [(s.params["source"]["job"], s.params["strength"]) for s in specs] == [
        (ids[0], 1.0), (ids[4], 1.0), (ids[0], 2.0), (ids[4], 2.0)]
    assert [s.params["source"]["params"]["seed"] for s in specs] == [0, 4, 0, 4]


def test_a_batch_source_is_its_succeeded_jobs_filtered(sessions: Any, tmp_path: Path) -> None:
    batch, ids = run_batch(sessions, tmp_path, GENERATE)
    specs = through_submitter(sessions, {"kind": "edit", "op": "rerender", "yaw": 45,
                                         "source": {"batch": batch[:8],
                                                    "where": {"seed": [1, 3]}}})
    assert [s.params["source"]["job"] for s in specs] == [ids[1], ids[3]]
    assert all(s.params["width"] == 32 for s in specs)  # the size comes from each source
    every = through_submitter(sessions, {"kind": "edit", "op": "rerender",
                                         "source": {"batch": batch}})
    assert len(every) == 6


@pytest.mark.parametrize(("source", "message"), [
    ({"batch": "ffffffffff"}, "no batch 'ffffffffff' in this project"),
    ({"batch": "BATCH", "where": {"seed": 99}}, "has no succeeded job matching where"),
    ({"batch": "BATCH", "where": 3}, "where: expected an object of param: value (or [values])"),
    ({"batch": "BATCH", "extra": 1}, 'a batch source takes {"batch": ID} and optionally'),
    ([{"line": 1}], "a list of sources holds"),
    ([], "an empty list of sources sweeps over nothing"),
])
def test_a_wrong_batch_or_source_list_names_its_line(sessions: Any, tmp_path: Path,
                                                     source: Any, message: str) -> None:
    batch, _ = run_batch(sessions, tmp_path, GENERATE)
    if isinstance(source, dict) and source.get("batch") == "BATCH":
        source = {**source, "batch": batch}
    with pytest.raises(ManifestError) as info:
        through_submitter(sessions, GENERATE, {"kind": "edit", "op": "rerender", "source": source})
    [error] = info.value.errors
    assert (error.line, error.field) == (2, "source") and message in error.message, error


def test_a_batch_source_waits_for_nothing_and_sees_only_its_project(sessions: Any,
                                                                    tmp_path: Path) -> None:
    running, _ = send(sessions, GENERATE)
    with pytest.raises(ManifestError) as info:
        through_submitter(sessions, {"kind": "edit", "op": "rerender",
                                     "source": {"batch": running}})
    assert "has not finished" in info.value.errors[0].message
    theirs, _ = run_batch(sessions, tmp_path, GENERATE, project="other")
    with pytest.raises(ManifestError) as info:
        through_submitter(sessions, {"kind": "edit", "op": "rerender", "source": {"batch": theirs}})
    assert "in this project" in info.value.errors[0].message
    with pytest.raises(ManifestError) as info:  # plain parsing has no database
        parse_manifest(json.dumps({"kind": "edit", "op": "rerender", "source": {"batch": theirs}}))
    assert "expanded against the database" in info.value.errors[0].message
