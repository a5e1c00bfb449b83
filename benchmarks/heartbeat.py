"""What a running unit's lease extension costs the database with many units running.

    python benchmarks/heartbeat.py [--units 1500] [--samples 50]

PostgreSQL: UNITS units of 64 noop jobs claimed by as many owners, then a sample of them have
their leases extended, one transaction each, as a worker's heartbeat does every third of a
lease: by the unit's job ids (``jobs.lifecycle.heartbeat``), and, side by side, by owner alone
among the running jobs (how it was found before). Prints one JSON object: milliseconds per
extension (median), and the rows each way read.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import select, text, update  # noqa: E402

from jobs import lifecycle  # noqa: E402
from jobs.db import make_engine, session_factory, upgrade  # noqa: E402
from jobs.manifest import MAX_JOBS, parse_manifest  # noqa: E402
from jobs.models import Job, job_status_is, utcnow  # noqa: E402
from jobs.sql import rowcount  # noqa: E402
from jobs.states import JobStatus  # noqa: E402
from jobs.submit import submit  # noqa: E402
from tests.conftest import create_pg_database, drop_pg_database  # noqa: E402

UNIT = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, default=1500)
    parser.add_argument("--samples", type=int, default=50)
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
        print(json.dumps({
            "benchmark": "heartbeat", "units": args.units, "running_jobs": total,
            "jobs_per_unit": UNIT, "samples": len(sample),
            "extension_ms_median": {k: round(statistics.median(v), 2) for k, v in ms.items()},
            "ratio": round(statistics.median(ms["by_owner"]) / statistics.median(ms["by_ids"]), 1),
            "extensions_per_s_per_unit": round(1 / 40, 3),
            "note": "a unit extends its jobs' leases every third of GENFARM_LEASE_SECONDS "
                    "(120 s); its pulse, one row, every GENFARM_PULSE_SECONDS (2 s)",
        }, indent=2))
    finally:
        engine.dispose()
        drop_pg_database(args.pg, url)


if __name__ == "__main__":
    main()
