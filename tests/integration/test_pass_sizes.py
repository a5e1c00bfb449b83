"""Pass sizes found by measurement and shared through the database (SQLite and PostgreSQL):
probing order, the best rate chosen, another worker reading it, drift followed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from jobs.db import make_engine, session_factory
from jobs.models import PassSize
from workers.passes import REPROBE_EVERY, PassSizes, probe_sizes

KEY = "generate:aether:128x128"


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    yield session_factory(engine)
    engine.dispose()


def run(passes: PassSizes, seconds_per_job: dict[int, float], largest: int, n: int) -> list[int]:
    """``n`` passes as a worker runs them: ask the size, report how long it took."""
    sizes = []
    for _ in range(n):
        size = passes.size(KEY, largest)
        sizes.append(size)
        passes.observe(KEY, size, size * seconds_per_job[size], largest)
    return sizes


def test_probe_then_choose_the_best_rate_and_share_it(sessions: sessionmaker[Session]) -> None:
    assert probe_sizes(16) == [1, 2, 4, 8, 16] and probe_sizes(12) == [1, 2, 4, 8, 12]
    assert probe_sizes(1) == [1]
    # float64 on a CPU: small passes make more images a second than large ones
    cost = {1: 0.016, 2: 0.015, 4: 0.020, 8: 0.030, 16: 0.042, 32: 0.05}
    first = PassSizes(sessions, "cpu", "float64")
    sizes = run(first, cost, 16, 19)
    # the first pass warms up, unmeasured; then each size for two passes and at least 8 jobs
    assert sizes == [1] * 9 + [2] * 4 + [4, 4, 8, 8, 16, 16]
    assert run(first, cost, 16, 5) == [2] * 5
    with sessions() as s:
        [row] = s.scalars(select(PassSize)).all()
    assert row.key == f"{KEY}|cpu|float64" and row.best == 2
    assert set(row.rates) == {"1", "2", "4", "8", "16"}
    # another worker (another process) uses it at once, without probing
    assert run(PassSizes(sessions, "cpu", "float64"), cost, 16, 3) == [2, 2, 2]
    # ... but not on another device or dtype
    assert run(PassSizes(sessions, "cuda", "float32"), cost, 16, 2) == [1, 1]
    # never more than what fits (out of memory lowered it) or what the worker allows
    assert PassSizes(sessions, "cpu", "float64").size(KEY, 1) == 1


def test_the_best_size_follows_the_rates_as_they_drift(sessions: sessionmaker[Session]) -> None:
    passes = PassSizes(sessions, "cpu", "float32")
    before = {1: 0.02, 2: 0.012, 4: 0.02, 8: 0.03}
    run(passes, before, 8, 17)
    assert passes.size(KEY, 8) == 2
    after = {1: 0.02, 2: 0.012, 4: 0.006, 8: 0.03}  # 4 became the best (another load, say)
    sizes = run(passes, after, 8, 3 * (REPROBE_EVERY + 2))
    assert 4 in sizes[: REPROBE_EVERY + 2]  # a neighbour is tried now and then
    assert sizes[-5:] == [4] * 5
    # ... on both sides of the best, in turn
    later = run(passes, after, 8, 4 * (REPROBE_EVERY + 1))
    assert {s for s in later if s != 4} == {2, 8}
    with sessions() as s:
        assert s.scalars(select(PassSize.best)).one() == 4
