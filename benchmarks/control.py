"""What a worker's own bookkeeping costs the database at a large farm's scale (PostgreSQL).

    python benchmarks/control.py [--units 1500] [--samples 50] [--open-batches 100]

Heartbeats: UNITS units of 64 noop jobs claimed by as many owners, then a sample of them have
their leases extended, one transaction each, as a worker's heartbeat does every third of a
lease: by the unit's job ids (``jobs.lifecycle.heartbeat``), and, side by side, by owner alone
among the running jobs (how it was found before).

Reconciler passes (every worker runs one every GENFARM_RECONCILE_INTERVAL, 30 s): with
OPEN_BATCHES batches still running (one job each left queued), a whole pass
(``Reconciler.run_once``), and its question of which open batches are done: one statement for
them all (``jobs.batches.done_batches``, as now) against a statement per batch, a session each
(the loop before).

Prints one JSON object, milliseconds as medians, the two ways of each alternating.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import select, text, update  # noqa: E402

from jobs import lifecycle  # noqa: E402
from jobs.batches import done_batches, open_batches  # noqa: E402
from jobs.db import make_engine, session_factory, upgrade  # noqa: E402
from jobs.manifest import MAX_JOBS, parse_manifest  # noqa: E402
from jobs.models import Job, job_status_is, utcnow  # noqa: E402
from jobs.settings import Settings  # noqa: E402
from jobs.sql import rowcount  # noqa: E402
from jobs.states import JobStatus  # noqa: E402
from jobs.submit import submit  # noqa: E402
from tests.conftest import create_pg_database, drop_pg_database  # noqa: E402
from workers.reconciler import Reconciler  # noqa: E402

UNIT = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, default=1500)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--open-batches", type=int, default=100)
    parser.add_argument("--pg", default=os.environ.get(
        "GENFARM_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    args = parser.parse_args()
    url = create_pg_database(args.pg)
    engine = make_engine(url)
    try:
        upgrade(url)
        sessions = session_factory(engine)
        total = args.units * UNIT
        for start in range(0, total, MAX_JOBS):
            lines = (json.dumps({"kind": "noop", "tag": {"range": [a, min(a + 50_000, total)]}})
                     for a in range(start, min(start + MAX_JOBS, total), 50_000))
            submit(sessions, "bench", parse_manifest("\n".join(lines)), lambda _: None,
                   unit_size=UNIT)
        with sessions() as s:
            queue = s.scalar(select(Job.queue).limit(1))
        assert queue is not None
        held: dict[str, list[str]] = {}
        for u in range(args.units):
            with sessions.begin() as s:
                held[f"unit-{u}"] = [c.id for c in lifecycle.claim_next(
                    s, queue, UNIT, f"unit-{u}", 120)]
        with engine.connect() as conn:
            conn.execute(text("ANALYZE jobs"))
            conn.commit()
        sample = list(held)[:: max(1, args.units // args.samples)]

        def by_ids(owner: str) -> int:
            with sessions.begin() as s:
                return lifecycle.heartbeat(s, owner, held[owner], 120)

        def by_owner(owner: str) -> int:
            with sessions.begin() as s:
                return rowcount(s.execute(update(Job).where(
                    Job.lease_owner == owner, job_status_is(JobStatus.RUNNING))
                    .values(lease_expires_at=utcnow() + timedelta(seconds=120))
                    .execution_options(synchronize_session=False)))

        ms: dict[str, list[float]] = {"by_ids": [], "by_owner": []}
        for owner in sample:  # the two ways alternate, so both see the same machine
            for name, extend in (("by_ids", by_ids), ("by_owner", by_owner)):
                t = time.perf_counter()
                assert extend(owner) == UNIT
                ms[name].append((time.perf_counter() - t) * 1000)
        heartbeat = {
            "units": args.units, "running_jobs": total, "jobs_per_unit": UNIT,
            "samples": len(sample),
            "extension_ms": {k: round(statistics.median(v), 2) for k, v in ms.items()},
            "ratio": round(statistics.median(ms["by_owner"]) / statistics.median(ms["by_ids"]), 1),
            "extensions_per_s_per_unit": round(1 / 40, 3),
            "note": "a unit extends its jobs' leases every third of GENFARM_LEASE_SECONDS "
                    "(120 s); its pulse, one row, every GENFARM_PULSE_SECONDS (2 s)",
        }
        print(json.dumps({"benchmark": "control", "heartbeat": heartbeat,
                          "reconciler": reconciler(url, sessions, args.open_batches)}, indent=2))
    finally:
        engine.dispose()
        drop_pg_database(args.pg, url)


def reconciler(url: str, sessions: Any, batches: int) -> dict[str, Any]:
    """A reconciler pass with ``batches`` open batches, and its done-batch question both ways."""
    for _ in range(batches):
        submit(sessions, "open", parse_manifest(json.dumps({"kind": "noop"})), lambda _: None,
               unit_size=UNIT)
    tmp = tempfile.mkdtemp(prefix="genfarm-control-")
    rec = Reconciler(Settings(database_url=url, data_dir=tmp, storage_url=f"file://{tmp}/out"),
                     lambda _: None)

    def one_connection() -> int:
        with sessions() as s:
            return len(done_batches(s, open_batches(s)))

    def session_each() -> int:
        with sessions() as s:
            ids = open_batches(s)
        done = 0
        for batch_id in ids:
            with sessions() as s:
                done += len(done_batches(s, [batch_id]))
        return done

    try:
        rec.run_once()  # publishes the open batches' jobs once
        ms: dict[str, list[float]] = {"pass": [], "done_one_connection": [],
                                      "done_session_each": []}
        for _ in range(15):
            for name, run in (("pass", rec.run_once), ("done_one_connection", one_connection),
                              ("done_session_each", session_each)):
                t = time.perf_counter()
                run()
                ms[name].append((time.perf_counter() - t) * 1000)
    finally:
        rec.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return {"open_batches": batches,
            **{f"{k}_ms": round(statistics.median(v), 2) for k, v in ms.items()},
            "passes_per_s_per_worker": round(1 / 30, 3)}


if __name__ == "__main__":
    main()
