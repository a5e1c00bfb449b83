"""A claim reads the jobs it takes, whatever the depth of the queue: PostgreSQL's plans for
claim_next and fill walk an index in claim order (rank, then line) with no sort, so a claim of
64 from 5,000 queued jobs of one key touches about 64 rows (it sorted all 5,000 before)."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import event

from jobs import lifecycle
from jobs.db import make_engine, session_factory, upgrade
from jobs.manifest import parse_manifest
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
