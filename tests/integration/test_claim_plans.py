"""A claim reads the jobs it takes, whatever the depth of the queue: PostgreSQL's plans for
claim_next and fill walk an index in claim order (rank, then line) with no sort, so a claim of
64 from 5,000 queued jobs of one key touches about 64 rows (it sorted all 5,000 before)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from jobs import lifecycle
from jobs.batches import done_batches, open_batches
from jobs.db import make_engine, session_factory, upgrade
from jobs.manifest import parse_manifest
from jobs.models import Job
from jobs.submit import submit

QUEUED = 5_000
LIMIT = 64


def nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(n for child in plan.get("Plans", []) for n in nodes(child))]


def test_claims_read_what_they_take_in_index_order(pg_url: str) -> None:
    upgrade(pg_url)
    engine = make_engine(pg_url)
    sessions = session_factory(engine)
    units: list[Any] = []
    for project, priority in (("deep", 0), ("urgent", 5)):  # two keys' worth of rank ties
        submit(sessions, project, parse_manifest(json.dumps(
            {"kind": "noop", "tag": {"range": [0, QUEUED]}, "priority": priority})),
            units.extend, unit_size=QUEUED)
    queue, key = units[0].queue, units[0].batch_key
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().startswith("WITH pick"):
            statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    with sessions.begin() as s:
        taken = lifecycle.claim_next(s, queue, LIMIT, "probe", 60)
        assert len(taken) == LIMIT
        lifecycle.fill(s, key, LIMIT, "probe", 60)
    event.remove(engine, "before_cursor_execute", capture)
    assert len(statements) == 2, [st[:80] for st, _ in statements]

    for statement, parameters in statements:
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters)
            [[[plan]]] = cursor.fetchall()
        finally:
            raw.rollback()  # the analyzed claim ran: undone
            raw.close()
        every = nodes(plan["Plan"])
        assert not [n for n in every if "Sort" in n["Node Type"]], json.dumps(plan)[:3000]
        scans = [n for n in every if n.get("Relation Name") == "jobs" and "Scan" in n["Node Type"]]
        assert scans and max(n["Actual Rows"] * n["Actual Loops"] for n in scans) <= 2 * LIMIT, \
            [(n["Node Type"], n.get("Index Name"), n["Actual Rows"]) for n in scans]
    engine.dispose()


@pytest.mark.parametrize("planning", ["force_generic_plan", "force_custom_plan"])
def test_prepared_claims_and_records_read_what_they_take(pg_url: str, planning: str) -> None:
    """psycopg prepares a statement run five times, and PostgreSQL may then plan it once for any
    values (a generic plan), which for a claim sorted every queued job. And statistics taken
    while the farm sat idle (nothing queued, nothing running) must not make a status the way
    in: a claim's update then read every queued job for each one it moved (40 ms a claim of
    3,000), a record or a heartbeat every running job. On such statistics, with 20 units
    running elsewhere, planned once for any values or for each run's own, claims, heartbeats
    and records read what they move."""
    upgrade(pg_url)
    engine = make_engine(pg_url)
    sessions = session_factory(engine)
    done: list[Any] = []
    submit(sessions, "yesterday", parse_manifest(json.dumps({"kind": "noop", "tag": {"range": [0, 2000]}})),
           done.extend, unit_size=2000)
    with sessions.begin() as s:  # yesterday's work, finished; the statistics see only that
        lifecycle.record(s, "old", [lifecycle.JobResult(j) for j in done[0].job_ids]
                         if lifecycle.claim(s, done[0].job_ids, "old", 60) else [])
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE jobs")
        conn.commit()
    units: list[Any] = []
    submit(sessions, "deep", parse_manifest(json.dumps({"kind": "noop", "tag": {"range": [0, 6 * QUEUED]}})),
           units.extend, unit_size=LIMIT)
    queue, key = units[0].queue, units[0].batch_key
    with sessions.begin() as s:  # other workers' units, running
        for i in range(20):
            lifecycle.claim_next(s, queue, LIMIT, f"elsewhere-{i}", 60)
    plans: list[dict[str, Any]] = []
    with engine.connect() as conn:
        explain_into(conn, planning, plans)
        conn.commit()
        for i in range(7):  # past psycopg's prepare threshold (5)
            with Session(bind=conn) as s:
                taken = lifecycle.claim_next(s, queue, LIMIT, f"probe-{i}", 60)
                taken += lifecycle.fill(s, key, 16, f"probe-{i}", 60)
                more = lifecycle.claim(s, [u for unit in units[-3:-1] for u in unit.job_ids],
                                       f"probe-{i}", 60)
                assert len(taken) == LIMIT + 16 and (len(more) == 2 * LIMIT) == (i == 0)
                held = [j.id for j in taken + more]
                assert lifecycle.heartbeat(s, f"probe-{i}", held, 60) == len(held)
                lifecycle.record(s, f"probe-{i}", [
                    lifecycle.JobResult(j.id, [], device_seconds=0.1 * n)
                    for n, j in enumerate(taken + more)])
                s.commit()
    last = {plan["Query Text"]: plan for plan in plans}  # each statement's last run
    moves = [p for text, p in last.items() if text.lstrip().startswith(
        ("WITH pick", "WITH moved", "UPDATE jobs SET lease_expires_at"))]
    assert len(moves) == 5, list(last)  # claim_next, fill, claim (ids), heartbeat, record
    for plan in moves:
        every = nodes(plan["Plan"])
        assert not [n for n in every if "Sort" in n["Node Type"]], json.dumps(plan)[:3000]
        read = [(n["Node Type"], n.get("Index Name"), read_rows(n)) for n in every
                if n.get("Relation Name") == "jobs"]  # rows of the table (an index also
        # holds the versions of each row that earlier updates left for vacuum)
        assert max(r for *_, r in read) <= 2 * LIMIT, (plan["Query Text"][:80], read)
    engine.dispose()


def explain_into(conn: Any, planning: str, plans: list[dict[str, Any]]) -> None:
    """Every statement ``conn`` runs from now on appends its plan, as run (auto_explain's JSON,
    with actual rows), to ``plans``; plans are made per ``planning`` (plan_cache_mode)."""
    def explained(notice: Any) -> None:
        text = notice.message_primary or ""
        if "{" in text:
            plans.append(json.loads(text[text.index("{"):]))

    driver = conn.connection.driver_connection
    assert driver is not None
    driver.add_notice_handler(explained)
    for setting in (f"SET plan_cache_mode = {planning}", "LOAD 'auto_explain'",
                    "SET auto_explain.log_min_duration = 0", "SET auto_explain.log_analyze = on",
                    "SET auto_explain.log_level = notice", "SET auto_explain.log_format = json"):
        conn.exec_driver_sql(setting)


def read_rows(node: dict[str, Any]) -> int:
    """Rows a plan node read: those it returned and those its filters dropped, every loop."""
    return int((node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
                + node.get("Rows Removed by Index Recheck", 0)) * node["Actual Loops"])


@pytest.mark.parametrize("planning", ["force_generic_plan", "force_custom_plan"])
def test_done_batch_questions_read_a_job_or_none_per_batch(pg_url: str, planning: str) -> None:
    """Which open batches are done: each finished unit asks of its batches, each reconciler
    pass of every open one. A batch is done when no job of it is left; asked as "a job not
    finished", a planner that counts a batch's jobs by the average batch (or by statistics
    taken while one batch held every job, as here) scanned the table from its start for each
    batch (190 ms for 101 batches beside one of 19,200 jobs). Each batch's question reads at
    most one job, planned for any values or for each run's own."""
    upgrade(pg_url)
    engine = make_engine(pg_url)
    sessions = session_factory(engine)
    units: list[Any] = []
    submit(sessions, "big", parse_manifest(json.dumps({"kind": "noop", "tag": {"range": [0, QUEUED]}})),
           units.extend, unit_size=LIMIT)
    with sessions.begin() as s:  # its first unit runs, and finishes
        taken = lifecycle.claim_next(s, units[0].queue, LIMIT, "w", 60)
        lifecycle.record(s, "w", [lifecycle.JobResult(j.id) for j in taken])
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE jobs")
        conn.commit()
    small: list[Any] = []
    for _ in range(30):  # batches of one job, queued after the statistics were taken
        submit(sessions, "small", parse_manifest(json.dumps({"kind": "noop"})), small.extend,
               unit_size=LIMIT)
    with sessions.begin() as s:  # and one of them, finished
        lifecycle.claim(s, small[-1].job_ids, "w", 60)
        lifecycle.record(s, "w", [lifecycle.JobResult(j) for j in small[-1].job_ids])
        finished = s.scalar(select(Job.batch_id).where(Job.id == small[-1].job_ids[0]))
    plans: list[dict[str, Any]] = []
    with engine.connect() as conn:
        explain_into(conn, planning, plans)
        conn.commit()
        with Session(bind=conn) as s:
            ids = open_batches(s)
            assert len(ids) == 31
            for _ in range(7):  # past psycopg's prepare threshold (5)
                assert done_batches(s, ids) == [finished]
                assert done_batches(s, [finished]) == [finished]
    asked = [p for p in plans if "jobs" in p["Query Text"] and "batches" in p["Query Text"]]
    assert asked
    for plan in asked:
        batches = max(read_rows(n) for n in nodes(plan["Plan"])  # the batches asked about
                      if n.get("Relation Name") == "batches")
        read = sum(read_rows(n) for n in nodes(plan["Plan"]) if n.get("Relation Name") == "jobs")
        assert read <= max(batches, 1) * 2, (plan["Query Text"][:120], read, batches)
    engine.dispose()
