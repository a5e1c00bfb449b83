"""Bulk submission: a manifest of N jobs through the one submission path (``make_submitter``,
as `genfarm submit` runs it: parse and validate, resolve, insert, publish) beside the naive way
(the same validation, then one INSERT and one Celery message per job), same run.

    python benchmarks/submit.py [--jobs 100000] [--rounds 3] [--database postgresql|sqlite]

Cases: ``sweep`` (one line whose seed range makes N generate jobs), ``lines`` (N generate
lines) and ``csv`` (N CSV rows). Each measurement runs in a fresh process against a fresh
database and an emptied broker, so its peak memory is its own: ``peak_rss_mb`` is that
process's peak resident set (``ru_maxrss``, interpreter and imports included: ``base_rss_mb``
is what it held before the manifest was made). The naive way runs ``--naive-jobs`` jobs and its
figure for N is extrapolated from its rate. Medians of ``--rounds`` runs. PostgreSQL and Redis
(tests/services.sh starts them) by default; ``--database sqlite`` measures the embedded default
(SQLite and Celery's filesystem broker under a temporary data folder). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = ("sweep", "lines", "csv")


def manifest(case: str, n: int) -> tuple[bytes, str]:
    """The manifest text of ``case`` for ``n`` jobs, and its format."""
    if case == "sweep":
        return json.dumps({"kind": "generate", "seed": {"range": [0, n]}}).encode(), "jsonl"
    if case == "lines":
        return "".join(json.dumps({"kind": "generate", "seed": i, "yaw": i % 90}) + "\n"
                       for i in range(n)).encode(), "jsonl"
    if case == "csv":
        return ("kind,seed,yaw\n" + "".join(f"generate,{i},{i % 90}\n" for i in range(n))
                ).encode(), "csv"
    raise SystemExit(f"unknown case {case!r}; cases: {', '.join(CASES)}")


def rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


# -- one measurement, in its own process --------------------------------------------------------
def child(case: str, n: int, naive: bool) -> dict[str, Any]:
    from jobs.settings import Settings
    from jobs.submit import Submitter
    from workers.app import make_app, make_submitter

    settings = Settings()
    app = make_app(settings)
    submitter: Submitter = make_submitter(settings, app)
    publish_s = [0.0, 0.0]  # seconds inside the publisher, and messages

    def timed(units: Sequence[Any]) -> None:
        t = time.perf_counter()
        submitter.publish(units)
        publish_s[0] += time.perf_counter() - t
        publish_s[1] += len(units)

    with app.producer_or_acquire():  # the broker connection made before the clock starts
        pass
    submitter.parse('{"kind": "generate", "seed": 1}')  # entry points read, as in a long process
    data, fmt = manifest(case, n)
    base = rss_mb()
    t0 = time.perf_counter()
    specs = submitter.parse(data, format=fmt, source=f"bench.{fmt}", project="bench")
    parsed = time.perf_counter()
    if naive:
        publish_s = naive_submit(submitter, app, specs)
    else:
        result = replace(submitter, publish=timed).submit("bench", specs, source=f"bench.{fmt}")
        assert result.published and result.job_count == n, result
    total = time.perf_counter() - t0
    return {"jobs": len(specs), "messages": int(publish_s[1]), "total_s": round(total, 3),
            "parse_s": round(parsed - t0, 3),
            "insert_s": round(total - (parsed - t0) - publish_s[0], 3),  # and all but publishing
            "publish_s": round(publish_s[0], 3), "base_rss_mb": base, "peak_rss_mb": rss_mb()}


def naive_submit(submitter: Any, app: Any, specs: list[Any]) -> list[float]:
    """One INSERT statement per job in one transaction, then one message per job; returns the
    seconds spent publishing, and the messages."""
    from sqlalchemy import insert

    from jobs.models import Batch, Job, Project, utcnow
    from jobs.submit import new_id

    batch_id, now = new_id(), utcnow()
    ids = [new_id() for _ in specs]
    with submitter.sessions.begin() as s:
        if s.get(Project, "bench") is None:
            s.add(Project(name="bench", created_at=now))
            s.flush()
        s.add(Batch(id=batch_id, project="bench", job_count=len(specs), created_at=now))
        s.flush()
        for index, (job_id, spec) in enumerate(zip(ids, specs, strict=True)):
            s.execute(insert(Job).values(
                id=job_id, batch_id=batch_id, index=index, line=spec.line, kind=spec.kind,
                model=spec.params["model"], queue=spec.queue, params=spec.params,
                batch_key=spec.batch_key, status="queued", priority=spec.priority,
                max_attempts=spec.max_attempts, created_at=now, device_seconds=0.0))
    t = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for job_id, spec in zip(ids, specs, strict=True):
            app.send_task("genfarm.run_unit", args=[[job_id], spec.batch_key, spec.queue],
                          queue=spec.queue, producer=producer)
    return [time.perf_counter() - t, len(specs)]


# -- the driver: fresh database and broker per measurement --------------------------------------
class Services:
    def __init__(self, database: str, pg: str, redis_url: str) -> None:
        self.database, self.pg, self.redis_url = database, pg, redis_url

    def run(self, case: str, n: int, naive: bool) -> dict[str, Any]:
        from jobs.db import upgrade
        from tests.conftest import create_pg_database, drop_pg_database

        tmp = Path(tempfile.mkdtemp(prefix="genfarm-bench-submit-"))
        env = {**os.environ, "GENFARM_DATA_DIR": str(tmp / "data"),
               "GENFARM_STORAGE_URL": (tmp / "out").as_uri()}
        for name in ("GENFARM_DATABASE_URL", "GENFARM_BROKER_URL"):
            env.pop(name, None)
        url = None
        try:
            if self.database == "postgresql":
                import redis

                url = create_pg_database(self.pg)
                env.update(GENFARM_DATABASE_URL=url, GENFARM_BROKER_URL=self.redis_url)
                redis.Redis.from_url(self.redis_url).flushdb()
            else:
                url = f"sqlite:///{tmp / 'data' / 'genfarm.db'}"
            upgrade(url)
            proc = subprocess.run([sys.executable, __file__, "--child", case, "--jobs", str(n)]
                                  + (["--naive"] if naive else []), env=env, cwd=str(tmp),
                                  capture_output=True, text=True, timeout=1800)
            if proc.returncode:
                raise RuntimeError(f"{case} (naive={naive}) failed:\n{proc.stderr[-4000:]}")
            return dict(json.loads(proc.stdout.strip().splitlines()[-1]))
        finally:
            if self.database == "postgresql" and url is not None:
                drop_pg_database(self.pg, url)
            shutil.rmtree(tmp, ignore_errors=True)


def median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]
            if isinstance(runs[0][k], int | float) and not isinstance(runs[0][k], bool)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--naive-jobs", type=int, default=5_000,
                        help="jobs the naive way submits (its figure for --jobs is extrapolated)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each; medians reported")
    parser.add_argument("--cases", default=",".join(CASES), help=f"of {', '.join(CASES)}")
    parser.add_argument("--database", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--pg", default=os.environ.get(
        "GENFARM_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--naive", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.jobs, args.naive)))
        return

    services = Services(args.database, args.pg, args.redis)
    cases: dict[str, Any] = {}
    for case in args.cases.split(","):
        runs = [services.run(case, args.jobs, naive=False) for _ in range(args.rounds)]
        naive = [services.run(case, args.naive_jobs, naive=True) for _ in range(args.rounds)]
        best, slow = median(runs), median(naive)
        rate = args.naive_jobs / slow["total_s"]
        cases[case] = {
            "genfarm": {**best, "jobs_per_s": round(args.jobs / best["total_s"])},
            "naive": {**slow, "jobs_per_s": round(rate),
                      f"extrapolated_s_for_{args.jobs}": round(args.jobs / rate, 1)},
            "speedup": round(args.jobs / rate / best["total_s"], 1),
            "rounds": runs,
        }
    embedded = args.database == "sqlite"
    print(json.dumps({
        "benchmark": "submit", "jobs": args.jobs, "naive_jobs": args.naive_jobs,
        "database": "sqlite (embedded)" if embedded else "postgresql",
        "broker": "filesystem (embedded)" if embedded else "redis",
        "memory": "peak_rss_mb: ru_maxrss of a fresh process per run, imports included",
        "bound": "100,000 jobs: <= 5 s, <= 300 MB (PostgreSQL + Redis)",
        "cpus": os.cpu_count(), "cases": cases,
    }, indent=2))


if __name__ == "__main__":
    main()
