"""Engines, sessions and schema upgrades. Alembic migrations are the only way the schema is made."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

import migrations

MIGRATIONS_DIR = Path(migrations.__file__).resolve().parent


def make_engine(url: str, *, connect_timeout: float = 10.0, **kwargs: Any) -> Engine:
    """An engine tuned for genfarm's access pattern on SQLite or PostgreSQL.

    ``connect_timeout`` bounds how long a PostgreSQL connection attempt may hang (libpq waits
    for the operating system otherwise, minutes for an unreachable host). SQLite opens a local
    file; its 30 s timeout is how long a writer waits for a lock, and stays as it is."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets the CLI read while a worker writes; busy_timeout rides out short locks.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    if parsed.get_backend_name() == "postgresql":
        # libpq takes whole seconds, and treats anything under 2 as 2
        connect_args = {"connect_timeout": max(2, math.ceil(connect_timeout)),
                        **kwargs.pop("connect_args", {})}
        kwargs["connect_args"] = connect_args
    return create_engine(url, **kwargs)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


@dataclass(frozen=True)
class Migration:
    """What an upgrade or downgrade did: the revision before and after, and the newest known."""

    before: str | None
    after: str | None
    head: str | None


def upgrade(url: str, revision: str = "head") -> Migration:
    """Bring the database at ``url`` up to ``revision`` (creating a SQLite file if needed).

    A target older than the database's revision is refused (alembic would silently do nothing):
    going back drops tables, so it is only done by :func:`downgrade`."""
    from alembic import command
    from alembic.util import CommandError

    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            script = _scripts(cfg)
            before = _current(conn)
            if _goes_back(script, before, revision):
                raise CommandError(
                    f"the database is at {before} and {revision!r} is older: upgrade never goes "
                    f"back; to drop what later revisions added, run "
                    f"`genfarm db downgrade --revision {revision}`")
            command.upgrade(cfg, revision)
            return Migration(before, _current(conn), script.get_current_head())
    finally:
        engine.dispose()


def downgrade(url: str, revision: str = "base") -> Migration:
    """Take the database at ``url`` back to ``revision``, dropping what newer revisions added."""
    from alembic import command

    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            before = _current(conn)
            command.downgrade(cfg, revision)
            return Migration(before, _current(conn), _scripts(cfg).get_current_head())
    finally:
        engine.dispose()


def _scripts(cfg: Any) -> Any:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(cfg)


def _current(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def _goes_back(script: Any, current: str | None, revision: str) -> bool:
    """Whether upgrading from ``current`` to ``revision`` asks for an older revision: a relative
    step back (-1), base, or an ancestor of the current one (which alembic takes as a no-op)."""
    if current is None:
        return False
    if revision == "base" or re.fullmatch(r"-\d+", revision):
        return True
    if "+" in revision or "-" in revision or ":" in revision:
        return False  # relative forward steps and ranges: alembic resolves (or refuses) them
    targets = script.get_revisions(revision)  # raises CommandError for an unknown revision
    older = {s.revision for s in script.walk_revisions("base", current)} - {current}
    return any(t is not None and t.revision in older for t in targets)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def is_initialised(engine: Engine) -> bool:
    return inspect(engine).has_table("jobs")
