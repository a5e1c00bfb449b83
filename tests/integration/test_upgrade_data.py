"""Upgrades keep data: from every earlier revision, with representative rows in place (a project,
a batch, jobs in every state, outputs, events, a token), on SQLite and PostgreSQL, every row
survives the upgrade to head, and the jobs queued before it run after it on the real runner.
Rows are written with plain SQL against the schema as it was at that revision (reflected), so
each new migration is checked the same way without touching this file."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, Table, create_engine, insert, select

from jobs.db import alembic_config, upgrade
from jobs.settings import Settings
from tests.conftest import create_pg_database, drop_pg_database
from workers.runner import Runtime


def revisions() -> list[str]:
    """Every revision, oldest first."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return [r.revision for r in reversed(list(script.walk_revisions()))]


EARLIER = revisions()[:-1]
NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
STATES = ["queued", "running", "succeeded", "failed", "cancelled"]


def rows_for(tables: dict[str, Table]) -> dict[str, list[dict[str, Any]]]:
    """Representative rows, each column filled only where the table has it at this revision."""
    def fit(table: str, row: dict[str, Any]) -> dict[str, Any]:
        cols = tables[table].c
        return {k: v for k, v in row.items() if k in cols}

    generate = {"model": "aether", "seed": 7, "width": 32, "height": 32, "truncation": 0.7,
                "yaw": 0.0, "pitch": 0.0, "radius": 2.7, "fov": 30.0, "save_latent": False}
    noop = {"payload_bytes": 16, "tag": 3, "fail": "never", "oom_above": 0}
    out: dict[str, list[dict[str, Any]]] = {
        "projects": [fit("projects", {"name": "acme", "created_at": NOW})],
        "batches": [fit("batches", {"id": "b" * 32, "project": "acme", "status": "active",
                                    "source": "shots.jsonl", "job_count": 6,
                                    "created_at": NOW})],
        "jobs": [], "outputs": [], "job_events": [],
    }
    kinds = [("generate", generate, "generate:aether:32x32"), ("noop", noop, "noop")]
    for index, state in enumerate(STATES + ["queued"]):
        kind, params, key = kinds[index % 2]
        job_id = f"{index:032x}"
        out["jobs"].append(fit("jobs", {
            "id": job_id, "batch_id": "b" * 32, "index": index, "kind": kind, "params": params,
            "model": "aether" if kind == "generate" else "noop",  # from 0004 on, as submitted
            "queue": "aether" if kind == "generate" else "noop",
            "batch_key": key, "status": state, "priority": index, "attempt": int(state != "queued"),
            "max_attempts": 3, "created_at": NOW, "device_seconds": 0.5 * index,
            "lease_owner": "host:1:2:abc" if state == "running" else None,
            "lease_expires_at": NOW + timedelta(seconds=60) if state == "running" else None,
            "finished_at": NOW if state in ("succeeded", "failed", "cancelled") else None,
            "error": "drill" if state == "failed" else None, "progress": 0.0}))
        out["job_events"].append(fit("job_events", {
            "job_id": job_id, "at": NOW, "from_status": None, "to_status": state,
            "attempt": 0, "reason": "submitted", "worker": None}))
        if state == "succeeded":
            out["outputs"].append(fit("outputs", {
                "job_id": job_id, "name": "image.png", "key": f"acme/{'b' * 32}/{job_id}/image.png",
                "sha256": "0" * 64, "bytes": 10, "content_type": "image/png", "created_at": NOW}))
    if "api_tokens" in tables:
        out["api_tokens"] = [fit("api_tokens", {"id": "t" * 32, "project": "acme",
                                                 "name": "pipeline", "token_sha256": "1" * 64,
                                                 "created_at": NOW})]
    return out


def snapshot(url: str, tables: list[str]) -> dict[str, list[dict[str, Any]]]:
    engine = create_engine(url)
    meta = MetaData()
    meta.reflect(engine, only=tables)
    with engine.connect() as conn:
        found = {t: [dict(r._mapping) for r in conn.execute(select(meta.tables[t]))]
                 for t in tables}
    engine.dispose()
    return found


def same(old: Any, new: Any) -> bool:
    if isinstance(old, datetime) and isinstance(new, datetime):
        return old.replace(tzinfo=None) == new.replace(tzinfo=None)
    if isinstance(old, str) and isinstance(new, dict | list):
        return json.loads(old) == new
    return bool(old == new)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    server = request.getfixturevalue("pg_server")
    url = create_pg_database(server)
    yield url
    drop_pg_database(server, url)


@pytest.mark.parametrize("start", EARLIER)
def test_upgrading_from_every_earlier_revision_keeps_every_row(
        empty_db: str, start: str, tmp_path: Path) -> None:
    upgrade(empty_db, start)
    engine = create_engine(empty_db)
    meta = MetaData()
    meta.reflect(engine)
    tables = {name: meta.tables[name] for name in meta.tables if name != "alembic_version"}
    rows = rows_for(tables)
    with engine.begin() as conn:
        for name in ("projects", "batches", "jobs", "outputs", "job_events", "api_tokens"):
            if rows.get(name):
                conn.execute(insert(tables[name]), rows[name])
    before = snapshot(empty_db, list(rows))
    engine.dispose()

    assert upgrade(empty_db, "head").after == revisions()[-1]

    after = snapshot(empty_db, list(rows))
    for table, old_rows in before.items():
        assert len(after[table]) == len(old_rows), table
        key = "id" if "id" in old_rows[0] else "name"
        by_key = {r[key]: r for r in after[table]}
        for old in old_rows:
            new = by_key[old[key]]
            for column, value in old.items():
                assert same(value, new[column]), (table, column, value, new[column])

    # the jobs queued before the upgrade run after it, on the runner of today
    settings = Settings(database_url=empty_db, data_dir=tmp_path / "data", model_profile="tiny",
                        storage_url=(tmp_path / "out").as_uri())
    queued = [r["id"] for r in before["jobs"] if r["status"] == "queued"]
    runtime = Runtime(settings)
    try:
        report = runtime.run_unit(queued)
    finally:
        runtime.close()
    assert report.claimed == len(queued) == report.succeeded, report.as_dict()
    final = {r["id"]: r for r in snapshot(empty_db, ["jobs"])["jobs"]}
    assert all(final[j]["status"] == "succeeded" and final[j]["queue"] for j in queued)
