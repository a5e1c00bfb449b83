"""One reconciler pass per interval for the whole farm, however many workers tick: a worker
whose tick finds the farm's last pass an interval old takes the turn; the others skip."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta
from pathlib import Path

from jobs import lifecycle
from jobs.db import make_engine, session_factory
from jobs.manifest import parse_manifest
from jobs.models import utcnow
from jobs.settings import Settings
from jobs.submit import submit
from jobs.turns import take_turn
from workers.reconciler import Reconciler


def test_a_turn_is_taken_once_per_interval(db_url: str) -> None:
    sessions = session_factory(make_engine(db_url))
    t0 = utcnow()
    with sessions.begin() as s:
        assert take_turn(s, "reconcile", 30, t0)  # the first ever
    for later, taken in ((1, False), (26, False), (27.5, True), (28, False), (60, True)):
        with sessions.begin() as s:
            assert take_turn(s, "reconcile", 30, t0 + timedelta(seconds=later)) == taken, later
    with sessions.begin() as s:  # another pass's turns are its own
        assert take_turn(s, "other", 30, t0)


def test_workers_ticking_at_once_take_one_turn(db_url: str) -> None:
    sessions = session_factory(make_engine(db_url))

    def tick(start: threading.Barrier, now: datetime, taken: list[bool]) -> None:
        start.wait()
        with sessions.begin() as s:
            taken.append(take_turn(s, "reconcile", 30, now))

    for round_ in range(5):
        start, now, taken = threading.Barrier(4), utcnow() + timedelta(minutes=round_), []
        ticks = [threading.Thread(target=tick, args=(start, now, taken)) for _ in range(4)]
        for t in ticks:
            t.start()
        for t in ticks:
            t.join(timeout=30)
        assert sorted(taken) == [False, False, False, True], round_


def test_of_two_workers_one_reconciles_each_interval(db_url: str, tmp_path: Path) -> None:
    settings = Settings(database_url=db_url, data_dir=tmp_path / "data",
                        storage_url=(tmp_path / "out").as_uri(), reconcile_interval=30)
    sessions = session_factory(make_engine(db_url))
    ids: list[str] = []
    submit(sessions, "acme", parse_manifest(json.dumps({"kind": "noop", "tag": {"range": [0, 3]}})),
           lambda units: ids.extend(i for u in units for i in u.job_ids), unit_size=64)
    with sessions.begin() as s:  # a lost worker's jobs, their lease run out
        lifecycle.claim(s, ids, "lost", 60, now=utcnow() - timedelta(seconds=120))
    published: list[object] = []
    one, two = (Reconciler(settings, published.extend) for _ in range(2))
    try:
        first = one.run_if_due()
        assert first is not None and first.requeued == 3 and published
        assert two.run_if_due() is None  # the farm's pass for this interval has run
        assert one.run_if_due() is None
    finally:
        one.close()
        two.close()
