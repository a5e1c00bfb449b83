"""The migrations are the only way the schema is made; they must match the models on both databases."""

import json

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from jobs import lifecycle
from jobs.db import current_revision, downgrade, make_engine, session_factory, upgrade
from jobs.manifest import parse_manifest
from jobs.models import Base
from jobs.submit import WorkUnit, submit

TABLES = {"projects", "batches", "jobs", "outputs", "job_events", "alembic_version"}


def test_upgrade_matches_models_and_downgrade_removes_everything(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        assert set(inspect(engine).get_table_names()) >= TABLES
        assert current_revision(engine) is not None
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == [], diff
        downgrade(db_url, "base")
        engine.dispose()
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade(db_url)  # and back up again: migrations are repeatable
        assert set(inspect(engine).get_table_names()) >= TABLES
    finally:
        engine.dispose()



def test_a_database_analyzed_before_the_upgrade_keeps_no_statistics_of_job_status(
        pg_url: str) -> None:
    """Statistics of jobs.status taken under an earlier schema, while a farm sat idle (every
    job finished), made claims sort every queued job. After the upgrade the column has none,
    and ANALYZE takes none; the other columns keep theirs."""
    upgrade(pg_url, "0011")
    engine = make_engine(pg_url)
    sessions = session_factory(engine)
    try:
        units: list[WorkUnit] = []
        submit(sessions, "idle", parse_manifest(json.dumps(
            {"kind": "noop", "tag": {"range": [0, 500]}})), units.extend, unit_size=500)
        with sessions.begin() as s:
            taken = lifecycle.claim(s, units[0].job_ids, "w", 60)
            lifecycle.record(s, "w", [lifecycle.JobResult(j.id) for j in taken])

        def analyzed() -> set[str]:
            with engine.begin() as conn:
                conn.exec_driver_sql("ANALYZE jobs")
                return {row[0] for row in conn.exec_driver_sql(
                    "SELECT attname FROM pg_stats WHERE tablename = 'jobs'")}

        assert {"status", "batch_key"} <= analyzed()
        upgrade(pg_url)
        with engine.begin() as conn:
            assert not conn.exec_driver_sql(
                "SELECT 1 FROM pg_stats WHERE tablename = 'jobs' AND attname = 'status'").all()
        assert "status" not in analyzed() and "batch_key" in analyzed()
    finally:
        engine.dispose()
