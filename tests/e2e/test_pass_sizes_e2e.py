"""A real worker measures its pass sizes on its own jobs and shares the best one; a second worker
process takes it from the database without measuring again."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from jobs.db import make_engine, session_factory, upgrade
from jobs.models import PassSize
from tests.conftest import Workers
from tests.helpers import Db, submit


def test_a_worker_measures_pass_sizes_and_the_next_one_reuses_them(
        tmp_path: Path, workers: Workers, pg_url: str, redis_url: str) -> None:
    env = {"GENFARM_DATABASE_URL": pg_url, "GENFARM_BROKER_URL": redis_url,
           "GENFARM_STORAGE_URL": (tmp_path / "out").as_uri(),
           "GENFARM_DATA_DIR": str(tmp_path / "data"), "GENFARM_MODEL_PROFILE": "tiny"}
    upgrade(pg_url)
    db = Db(pg_url)
    first = workers.start(env, "--max-batch", "4")
    batch = submit(env, tmp_path, {"kind": "generate", "seed": {"range": [0, 40]}, "width": 48,
                                   "height": 48})
    db.wait(batch, workers)
    engine = make_engine(pg_url)
    with session_factory(engine)() as s:
        [row] = s.scalars(select(PassSize)).all()
    engine.dispose()
    assert row.key == "generate:aether:48x48|cpu|float64"
    assert set(row.rates) == {"1", "2", "4"}
    assert row.best == max((1, 2, 4), key=lambda n: row.rates[str(n)])
    assert "chosen" in workers.logs(tail=None)
    workers.stop(first)
    workers.start(env, "--max-batch", "4")
    again = submit(env, tmp_path, {"kind": "generate", "seed": {"range": [100, 140]},
                                   "width": 48, "height": 48})
    db.wait(again, workers)
    assert workers.logs(tail=None).count("chosen") == 1  # read, not measured again
    db.close()
