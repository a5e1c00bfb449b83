"""Farm overhead: N null-model jobs through genfarm (work units, claims, bulk records, parallel
uploads) against the naive pipeline (one task, two updates and one write per job), same run.

    python benchmarks/overhead.py [--jobs 10000] [--workers 2] [--storage s3] [--storage-dir DIR]

Needs Redis and PostgreSQL (tests/services.sh starts them). Storage is a local folder by
default, in the system's temporary folder or ``--storage-dir``: each job's output is a folder
and a file there, and ``folder_create_us`` reports what the folder charges for each (on a
virtual machine's disk, hundreds of microseconds: a floor under both pipelines; ``--storage-dir
/dev/shm`` takes it out, leaving the pipelines' own costs). `--storage s3` starts moto's server
on loopback and measures through it (moto takes a few hundred PUTs a second, so that figure
measures moto as much as either pipeline). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import Engine, insert, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jobs.db import make_engine, session_factory, upgrade  # noqa: E402
from jobs.manifest import parse_manifest  # noqa: E402
from jobs.models import Batch, Job, Project, utcnow  # noqa: E402
from jobs.settings import Settings  # noqa: E402
from jobs.submit import new_id, submit  # noqa: E402
from tests.conftest import create_pg_database, drop_pg_database  # noqa: E402
from workers.app import make_app, publisher  # noqa: E402

BIN = Path(sys.executable).parent


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, env={**os.environ, **env}, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True, cwd=str(ROOT))


def stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def wait_ready(log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and "ready." in log.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise TimeoutError(f"worker not ready: {log.read_text(errors='replace')[-2000:]}")


def wait_until(engine: Engine, predicate, timeout: float = 600, poll: float = 0.02) -> float:  # type: ignore[no-untyped-def]
    """When ``predicate(connection)`` first held (perf_counter), asked every ``poll`` seconds on
    one connection: a session and a checkout per poll cost the machine both pipelines share
    more than the question (a count of the naive batch's jobs every 20 ms cost PostgreSQL
    seconds of CPU over a run)."""
    deadline = time.monotonic() + timeout
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            if predicate(conn):
                return time.perf_counter()
            conn.rollback()  # a new snapshot for the next question
            time.sleep(poll)
    raise TimeoutError("timed out")


def create_cost_us(root: Path, n: int = 500) -> dict[str, float]:
    """Microseconds per mkdir and per file creation in ``root`` (a job's output is one of each),
    medians of ``n``: the storage's own floor under any pipeline writing there.

    The probe's files stay until the benchmark ends: on ext4 without a journal, inodes deleted
    in the last minute (five, while their blocks are unwritten) are skipped one by one by every
    creation after them, so deleting many files makes the next creations cost up to 20 times
    more (1.1 ms against 50 us per job's two inodes, measured here after a run's cleanup)."""
    probe = root / f".probe-{time.monotonic_ns()}"
    probe.mkdir()
    made: dict[str, list[float]] = {"mkdir": [], "create": []}
    for i in range(n):
        t = time.perf_counter()
        os.mkdir(probe / str(i))
        t1 = time.perf_counter()
        os.close(os.open(probe / str(i) / "f", os.O_WRONLY | os.O_CREAT, 0o666))
        made["mkdir"].append(t1 - t)
        made["create"].append(time.perf_counter() - t1)
    return {k: round(sorted(v)[n // 2] * 1e6, 1) for k, v in made.items()}


def run_genfarm(settings: Settings, sessions, n: int) -> float:  # type: ignore[no-untyped-def]
    specs = parse_manifest(json.dumps({"kind": "noop", "tag": {"range": [0, n]}}))
    app = make_app(settings)
    t0 = time.perf_counter()
    result = submit(sessions, "bench", specs, publisher(app), unit_size=settings.unit_size)

    finished = select(Batch.finished_at).where(Batch.id == result.batch_id)
    return wait_until(sessions.kw["bind"], lambda conn: conn.scalar(finished) is not None) - t0


def run_naive(settings: Settings, sessions, n: int) -> float:  # type: ignore[no-untyped-def]
    from benchmarks.naive import app as naive_app

    batch_id = new_id()
    now = utcnow()
    rows = [{"id": new_id(), "batch_id": batch_id, "index": i, "kind": "noop",
             "params": {"payload_bytes": 64, "tag": i}, "batch_key": "noop", "status": "queued",
             "priority": 0, "attempt": 0, "max_attempts": 3, "created_at": now,
             "device_seconds": 0.0} for i in range(n)]
    t0 = time.perf_counter()
    with sessions.begin() as s:
        if s.get(Project, "bench") is None:
            s.add(Project(name="bench", created_at=now))
            s.flush()
        s.add(Batch(id=batch_id, project="bench", job_count=n, created_at=now))
        s.flush()
        s.execute(insert(Job), rows)
    with naive_app.producer_or_acquire() as producer:
        for row in rows:
            naive_app.send_task("naive.run_job", args=[row["id"], "bench", batch_id, 64],
                                queue="naive", producer=producer)

    left = select(Job.id).where(Job.batch_id == batch_id, Job.status != "succeeded").exists()
    return wait_until(sessions.kw["bind"], lambda conn: not conn.scalar(select(left))) - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternate the two pipelines this many times; report the median")
    parser.add_argument("--workers", type=int, default=2, help="worker processes for each pipeline")
    parser.add_argument("--storage", default="local", help="local, or s3 (moto on loopback)")
    parser.add_argument("--storage-dir", type=Path, help="where the local folder storage lives "
                        "(default: the system's temporary folder); e.g. /dev/shm, to take the "
                        "disk's cost of creating files out of both pipelines")
    parser.add_argument("--pg", default=os.environ.get(
        "GENFARM_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/11")
    parser.add_argument("--unit-size", type=int, default=64, help="job ids per message (genfarm)")
    parser.add_argument("--max-batch", type=int, default=16, help="jobs per pass (genfarm)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="genfarm-bench-"))
    url = create_pg_database(args.pg)
    procs: list[subprocess.Popen[bytes]] = []
    cleanup = [tmp]
    folder_cost: dict[str, dict[str, float]] = {}
    out: Path | None = None
    env = {"GENFARM_DATABASE_URL": url, "GENFARM_BROKER_URL": args.redis,
           "GENFARM_DATA_DIR": str(tmp / "data"), "GENFARM_UNIT_SIZE": str(args.unit_size),
           "GENFARM_MAX_BATCH": str(args.max_batch), "GENFARM_RECONCILE_INTERVAL": "3600"}
    try:
        if args.storage == "s3":
            import boto3

            from tests.conftest import S3_ENV, free_port, wait_port

            port = free_port()
            procs.append(start([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                str(port)], {}, tmp / "moto.log"))
            wait_port(port)
            env.update(S3_ENV, AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
                       GENFARM_STORAGE_URL="s3://bench/out")
            os.environ.update(S3_ENV, AWS_ENDPOINT_URL=env["AWS_ENDPOINT_URL"])
            boto3.client("s3").create_bucket(Bucket="bench")
        else:
            out = Path(tempfile.mkdtemp(prefix="genfarm-bench-out-", dir=args.storage_dir))
            cleanup.append(out)
            env["GENFARM_STORAGE_URL"] = out.as_uri()
            folder_cost["before"] = create_cost_us(out)
        os.environ.update(env)
        import redis

        redis.Redis.from_url(args.redis).flushdb()
        upgrade(url)
        settings = Settings()
        engine = make_engine(url)
        sessions = session_factory(engine)

        glog, nlog = tmp / "genfarm-worker.log", tmp / "naive-worker.log"
        gw = start([str(BIN / "genfarm"), "worker", "-c", str(args.workers), "-l", "INFO"], env, glog)
        nw = start([str(BIN / "celery"), "-A", "benchmarks.naive", "worker", "-Q", "naive", "-c",
                    str(args.workers), "-l", "INFO", "-n", f"naive-{os.getpid()}@%h",
                    "--without-mingle", "--without-gossip"], env, nlog)
        procs += [gw, nw]
        wait_ready(glog)
        wait_ready(nlog)
        run_genfarm(settings, sessions, 200)  # warm up both pipelines
        run_naive(settings, sessions, 200)
        rounds = []
        for _ in range(args.rounds):  # alternate, so both see the same noise on a shared machine
            g = run_genfarm(settings, sessions, args.jobs)
            naive = run_naive(settings, sessions, args.jobs)
            rounds.append({"genfarm_jobs_per_s": round(args.jobs / g, 1),
                           "naive_jobs_per_s": round(args.jobs / naive, 1),
                           "ratio": round(naive / g, 2)})
        engine.dispose()
        if out is not None:
            folder_cost["after"] = create_cost_us(out)
        median = sorted(rounds, key=lambda r: r["ratio"])[len(rounds) // 2]
        print(json.dumps({
            "benchmark": "overhead", "jobs": args.jobs, "worker_processes": args.workers,
            "storage": "s3 (moto server on loopback)" if args.storage == "s3" else "local folder",
            "storage_path": env["GENFARM_STORAGE_URL"], "broker": "redis",
            # what the folder charges per job before either pipeline does anything (each job's
            # output is a folder and a file: two inodes), measured on it before and after the
            # runs: a figure far above tens of microseconds says the file system, not the
            # pipelines, bounds both (see create_cost_us)
            "folder_create_us": folder_cost or None, "database": "postgresql",
            "cpus": os.cpu_count(), "unit_size": settings.unit_size,
            "max_batch": settings.max_batch, "rounds": rounds,
            "median": median, "ratio": median["ratio"],
        }, indent=2))
    finally:
        for proc in procs:
            stop(proc)
        drop_pg_database(args.pg, url)
        for path in cleanup:
            shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
