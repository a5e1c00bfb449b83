"""Estimates, budgets and usage on SQLite and PostgreSQL: throughput recorded per pass adds up,
an estimate names where its rate comes from, a project's budget refuses a submission that
would overrun it (nothing written) and counts queued work at its estimate."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import func, select, update

from jobs import lifecycle
from jobs.budgets import committed_seconds, set_budget, usage
from jobs.errors import BudgetExceeded
from jobs.estimates import estimate, record_pass
from jobs.manifest import default_catalog, parse_manifest
from jobs.models import Job
from jobs.registry import default_cost
from jobs.submit import submit


@pytest.fixture
def sessions(db_url: str):  # type: ignore[no-untyped-def]
    from jobs.db import make_engine, session_factory

    engine = make_engine(db_url)
    yield session_factory(engine)
    engine.dispose()


def specs(*lines: dict[str, Any]) -> list[Any]:
    return parse_manifest("\n".join(json.dumps(line) for line in lines))


def jobs_of(found: list[Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(s.kind, s.batch_key, s.params) for s in found]


def test_default_cost_counts_pixels_frames_and_steps() -> None:
    assert default_cost("generate", {"width": 128, "height": 128}) == 1.0
    assert default_cost("generate", {"width": 256, "height": 128}) == 2.0
    assert default_cost("video", {"width": 64, "height": 64, "frames": 48}) == 12.0
    assert default_cost("generate", {"width": 512, "height": 512, "steps": 30}) == 16 * 30
    assert default_cost("edit", {"width": 512, "height": 512, "steps": 30,
                                 "strength": 0.5}) == 16 * 15
    # an edit without a size of its own takes its source's
    assert default_cost("edit", {"source": {"params": {"width": 256, "height": 256}}}) == 4.0


def test_an_estimate_says_where_its_rate_comes_from(sessions: Any) -> None:
    catalog = default_catalog()
    lines = specs({"kind": "generate", "seed": {"range": [0, 10]}, "width": 64, "height": 64},
                  {"kind": "generate", "seed": 1, "width": 256, "height": 256},
                  {"kind": "noop", "tag": 1})
    with sessions() as s:  # before any run: the families' benchmark figures
        before = estimate(s, catalog, jobs_of(lines))
    assert {g.basis for g in before.groups} == {"benchmark figure (no run yet)"}
    first = {g.batch_key: g for g in before.groups}["generate:aether:64x64"]
    assert first.device_seconds == pytest.approx(10 * 0.25 / 40)
    with sessions.begin() as s:  # two passes at 64x64 on the CPU: 0.2 s a unit
        record_pass(s, "generate:aether:64x64", "cpu", 16, 4.0, 0.5)
        record_pass(s, "generate:aether:64x64", "cpu", 16, 4.0, 1.1)
    with sessions() as s:
        after = estimate(s, catalog, jobs_of(lines), workers=2)
    by_key = {g.batch_key: g for g in after.groups}
    small, large = by_key["generate:aether:64x64"], by_key["generate:aether:256x256"]
    assert small.basis == "measured: 32 jobs on cpu"
    assert small.device_seconds == pytest.approx(10 * 0.25 * 0.2)
    assert large.basis.startswith("measured: 32 generate jobs of aether at other sizes")
    assert large.device_seconds == pytest.approx(4 * 0.2)
    assert after.wall_seconds == pytest.approx(after.device_seconds / 2)


def test_a_model_with_no_run_and_no_benchmark_is_unknown(sessions: Any) -> None:
    from dataclasses import replace

    from jobs.catalog import Catalog
    from jobs.registry import Registry

    builtin = default_catalog()
    studio = replace(builtin.registry.families["noop"], unit_seconds=None)  # a plugin's family
    catalog = Catalog(Registry(builtin.registry.kinds, {"noop": studio}), builtin.models)
    with sessions() as s:
        found = estimate(s, catalog, jobs_of(specs({"kind": "noop", "tag": 1})))
    assert found.unknown == ["noop jobs of noop"] and found.device_seconds == 0.0


def test_a_budget_refuses_what_would_overrun_it_and_writes_nothing(sessions: Any) -> None:
    catalog = default_catalog()
    with sessions.begin() as s:
        record_pass(s, "generate:aether:128x128", "cpu", 10, 10.0, 20.0)  # 2 s a job
        set_budget(s, "acme", 50.0)
    line = {"kind": "generate", "seed": {"range": [0, 20]}}
    first = submit(sessions, "acme", specs(line), lambda units: None, unit_size=64,
                   catalog=catalog)  # 20 jobs x 2 s = 40 s of 50: accepted
    with sessions() as s:
        assert committed_seconds(s, "acme") == pytest.approx(40.0)
        count = s.scalar(select(func.count()).select_from(Job))
    with pytest.raises(BudgetExceeded) as info:  # another 40 s: 80 > 50
        submit(sessions, "acme", specs(line), lambda units: None, unit_size=64,
               catalog=catalog)
    assert (info.value.left, info.value.needed) == (pytest.approx(10.0), pytest.approx(40.0))
    assert "10.0 of its 50.0 device-seconds left" in str(info.value)
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == count  # nothing written
    # finished jobs count at what they took: these took 0.5 s each, so 30 s are free again
    with sessions.begin() as s:
        claimed = lifecycle.claim(s, [j for (j,) in s.execute(
            select(Job.id).where(Job.batch_id == first.batch_id))], "w:1", 60)
        lifecycle.record(s, "w:1", [lifecycle.JobResult(c.id, device_seconds=0.5)
                                    for c in claimed])
    with sessions() as s:
        assert committed_seconds(s, "acme") == pytest.approx(10.0)
    submit(sessions, "acme", specs(line), lambda units: None, unit_size=64, catalog=catalog)
    with sessions() as s:
        [row] = usage(s, "acme")
    assert row["jobs"] == 40 and row["succeeded"] == 20
    assert row["device_seconds"] == pytest.approx(10.0)
    assert row["budget"]["committed"] == pytest.approx(50.0) and row["budget"]["left"] == 0.0


def test_a_budget_counts_only_what_was_submitted_since_it_was_set(sessions: Any) -> None:
    catalog = default_catalog()
    with sessions.begin() as s:
        record_pass(s, "noop:noop", "cpu", 1, 1.0, 1.0)  # 1 s a job
    submit(sessions, "acme", specs({"kind": "noop", "tag": {"range": [0, 30]}}),
           lambda units: None, unit_size=64, catalog=catalog)
    with sessions.begin() as s:
        set_budget(s, "acme", 10.0)
        s.execute(update(Job).values(created_at=Job.created_at))  # untouched: set after them
    submit(sessions, "acme", specs({"kind": "noop", "tag": {"range": [0, 10]}}),
           lambda units: None, unit_size=64, catalog=catalog)
    with pytest.raises(BudgetExceeded):
        submit(sessions, "acme", specs({"kind": "noop", "tag": 99}), lambda units: None,
               unit_size=64, catalog=catalog)
    with sessions.begin() as s:
        set_budget(s, "acme", None)
    submit(sessions, "acme", specs({"kind": "noop", "tag": 99}), lambda units: None,
           unit_size=64, catalog=catalog)
