"""The migrations are the only way the schema is made; they must match the models on both databases."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from jobs.db import current_revision, downgrade, make_engine, upgrade
from jobs.models import Base

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
