"""Latency on an idle worker: one job at a time through the real submission path, from the
submit call to the job succeeded, less the job's own device seconds (its forward pass).

    python benchmarks/latency.py [--jobs 50] [--gap 2.5] [--kinds noop,generate]
    python benchmarks/latency.py --variant "before /tmp/genfarm-before" --variant "after ."

One real `genfarm worker` (prefork, one process) per variant on production parts: PostgreSQL (a
fresh database each), Redis (a private redis-server, a database each; so no other worker of a
shared machine takes the messages) and a local folder as storage. A variant's worker may run
another checkout of genfarm (a folder, e.g. from `git archive`) or other settings
(``"name folder K=V ..."``, e.g. ``GENFARM_UNIT_SIZE=1`` or ``OMP_WAIT_POLICY=PASSIVE``), and the
variants take turns job by job, so that they see the same noise on a shared machine. Each job is
the default generate model (profile default, 128x128) or noop (no model); the submission and
the client run this checkout. Before each job its worker sits idle for ``--gap`` seconds.

Per job: the submit call's start, its return, the moment the message was published, the job's
created, claimed (event) and finished times, its device seconds, its batch's finalization, the
moment a client polling the database (every ``--poll`` seconds) saw it succeed, and the phases
the worker logged for its unit (milliseconds). Every clock is this machine's wall clock.
Needs Redis and PostgreSQL (tests/services.sh starts them). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from sqlalchemy import select  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from jobs.db import upgrade  # noqa: E402
from jobs.models import Batch, Job, JobEvent  # noqa: E402
from jobs.settings import Settings  # noqa: E402
from tests.conftest import create_pg_database, drop_pg_database  # noqa: E402

UNIT_LINE = re.compile(r"unit (\S*): (\{.*\})\s*$")
LINES = {
    "noop": lambda n: {"kind": "noop", "tag": n},
    "generate": lambda n: {"kind": "generate", "seed": n, "width": 128, "height": 128},
}


@dataclasses.dataclass
class Variant:
    name: str
    tree: Path
    env: dict[str, str]
    url: str = ""
    redis: str = ""
    log: Path = Path()
    proc: subprocess.Popen[bytes] | None = None
    submitter: Any = None
    engine: Any = None
    poller: Any = None  # the client's own connection (psycopg, autocommit)
    log_offset: int = 0
    units: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


def parse_variant(text: str) -> Variant:
    """``"NAME [DIR [K=V ...]]"``: DIR defaults to this checkout."""
    name, *rest = shlex.split(text)
    tree = rest.pop(0) if rest and "=" not in rest[0] else "."
    return Variant(name, (ROOT / tree).resolve(), dict(p.split("=", 1) for p in rest))


def start_worker(v: Variant, env: dict[str, str]) -> None:
    # the variant's checkout first on the path: its cli, jobs, workers and storage packages
    cmd = [sys.executable, "-c", "from cli.main import main; main()", "worker", "-l", "INFO",
           "--concurrency", "1"]  # one process: what the figures describe
    full = {**os.environ, **env, **v.env, "PYTHONPATH": str(v.tree)}
    v.proc = subprocess.Popen(cmd, env=full, stdout=v.log.open("wb"), stderr=subprocess.STDOUT,
                              start_new_session=True, cwd=str(v.tree))


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def wait_ready(v: Variant, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if v.log.exists() and "ready." in v.log.read_text(errors="replace"):
            return
        if v.proc is not None and v.proc.poll() is not None:
            break
        time.sleep(0.1)
    raise TimeoutError(f"worker {v.name} not ready: {v.log.read_text(errors='replace')[-3000:]}")


def read_units(v: Variant) -> None:
    """The worker's unit log lines since the last read, by the batch each finished."""
    with v.log.open("rb") as fh:
        fh.seek(v.log_offset)
        text = fh.read()
    cut = text.rfind(b"\n") + 1
    v.log_offset += cut
    for line in text[:cut].decode(errors="replace").splitlines():
        m = UNIT_LINE.search(line)
        if m:
            report = ast.literal_eval(m.group(2))
            for batch_id in report.get("batches_finished", []):
                v.units[batch_id] = report


def ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def one_job(v: Variant, kind: str, n: int, poll: float, timeout: float = 120) -> dict[str, Any]:
    sessions = v.submitter.sessions
    published: list[float] = []
    inner = v.submitter.publish

    def publish(units: Any) -> None:
        inner(units)
        published.append(time.time())

    submitter = dataclasses.replace(v.submitter, publish=publish)
    line = json.dumps(LINES[kind](n))
    t_start = time.time()
    result = submitter.submit_manifest("latency", line, source="latency.jsonl")
    t_return = time.time()
    # as a client sees it: polling the job's status, on a plain connection of its own (a
    # query a poll, not a session's checkout, ping and rollback: less load beside the worker)
    cur = v.poller.cursor()
    job_id = cur.execute("SELECT id FROM jobs WHERE batch_id = %s",
                         (result.batch_id,)).fetchone()[0]
    seen = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = cur.execute("SELECT status FROM jobs WHERE id = %s", (job_id,)).fetchone()[0]
        if status in ("succeeded", "failed", "cancelled"):
            seen = time.time()
            break
        time.sleep(poll)
    while time.monotonic() < deadline:  # then its batch's finalization, before the next job
        if cur.execute("SELECT finished_at FROM batches WHERE id = %s",
                       (result.batch_id,)).fetchone()[0]:
            break
        time.sleep(poll)
    cur.close()
    with sessions() as s:
        job = s.get_one(Job, job_id)
        batch = s.get_one(Batch, result.batch_id)
        events = {e.to_status: ts(e.at) for e in s.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))}
    if job.status != "succeeded" or seen is None:
        raise RuntimeError(f"{v.name}: job {job_id} is {job.status}: {job.error}; its worker's "
                           f"log ends:\n{v.log.read_text(errors='replace')[-3000:]}")
    return {"kind": kind, "batch_id": result.batch_id, "start": t_start, "returned": t_return,
            "published": published[0] if published else None, "created": ts(job.created_at),
            "claimed": events.get("running"), "finished": ts(job.finished_at),
            "seen": seen, "finalized": ts(batch.finished_at), "device_s": job.device_seconds}


def summarize(v: Variant, samples: list[dict[str, Any]]) -> dict[str, Any]:
    def ms(values: list[float]) -> dict[str, float]:
        values = sorted(values)
        pick = lambda q: values[min(len(values) - 1, round(q * (len(values) - 1)))]  # noqa: E731
        return {"p50": round(pick(0.5) * 1000, 1), "p95": round(pick(0.95) * 1000, 1)}

    def gap(a: str, b: str, less_device: bool = False) -> list[float]:
        return [s[b] - s[a] - (s["device_s"] if less_device else 0.0) for s in samples
                if s.get(a) is not None and s.get(b) is not None]

    # the worker logs a unit after its batch is finalized: read them all at the end
    worker_ms = [v.units.get(s["batch_id"], {}).get("ms", {}) for s in samples]
    phases = sorted({k for w in worker_ms for k in w})
    return {
        "jobs": len(samples),
        # the acceptance figure: the submit call's start to the job's recorded finish
        "added_ms": ms(gap("start", "finished", True)),
        "added_client_ms": ms(gap("start", "seen", True)),
        "created_to_finished_less_device_ms": ms(gap("created", "finished", True)),
        "device_ms": ms([s["device_s"] for s in samples]),
        "breakdown_p50_ms": {
            "submit_to_created (parse, validate, resolve)": ms(gap("start", "created"))["p50"],
            "created_to_published (insert, commit, publish)": ms(gap("created", "published"))["p50"],
            "published_to_claimed (broker, pool, claim start)":
                ms(gap("published", "claimed"))["p50"],
            "claimed_to_finished_less_device": ms(gap("claimed", "finished", True))["p50"],
            "finished_to_seen (client poll)": ms(gap("finished", "seen"))["p50"],
            "finished_to_finalized (batch)": ms(gap("finished", "finalized"))["p50"],
            "submit_call (all of it)": ms(gap("start", "returned"))["p50"],
        },
        "worker_unit_ms_p50": {p: round(median(w.get(p, 0.0) for w in worker_ms), 1)
                               for p in phases},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50, help="jobs per kind and variant")
    parser.add_argument("--gap", type=float, default=2.5,
                        help="seconds the worker sits idle before each job")
    parser.add_argument("--kinds", default="noop,generate")
    parser.add_argument("--poll", type=float, default=0.01, help="client poll interval")
    parser.add_argument("--warmup", type=int, default=3, help="jobs per kind first, not counted")
    parser.add_argument("--variant", action="append", default=[], metavar="'NAME DIR [K=V ...]'",
                        help="a worker from checkout DIR with these GENFARM_* settings "
                             "[default: this checkout as is]; repeat to compare")
    parser.add_argument("--reconcile-interval", type=float, default=3600,
                        help="GENFARM_RECONCILE_INTERVAL of the workers")
    parser.add_argument("--keep", action="store_true", help="keep the workers' logs and outputs")
    parser.add_argument("--pg", default=os.environ.get(
        "GENFARM_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--redis", default=None,
                        help="the first variant's Redis database, the next ones taking the next "
                             "[default: a private redis-server on a free port, so that no other "
                             "worker of this machine takes the messages]")
    args = parser.parse_args()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    variants = [parse_variant(t) for t in args.variant] or [Variant("this", ROOT, {})]

    import redis

    from workers.app import make_app, make_submitter

    tmp = Path(tempfile.mkdtemp(prefix="genfarm-latency-"))
    saved_env = dict(os.environ)
    server = None
    try:
        if args.redis is None:
            from tests.conftest import free_port, wait_port

            port = free_port()
            server = subprocess.Popen(
                ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                 "--appendonly", "no", "--dir", str(tmp)], stdout=(tmp / "redis.log").open("wb"),
                stderr=subprocess.STDOUT, start_new_session=True)
            wait_port(port)
            args.redis = f"redis://127.0.0.1:{port}/0"
        base, _, db = args.redis.rpartition("/")
        for i, v in enumerate(variants):
            v.url = create_pg_database(args.pg)
            v.redis = f"{base}/{int(db) + i}"
            redis.Redis.from_url(v.redis).flushdb()
            upgrade(v.url)
            v.log = tmp / f"worker-{v.name}.log"
            env = {"GENFARM_DATABASE_URL": v.url, "GENFARM_BROKER_URL": v.redis,
                   "GENFARM_DATA_DIR": str(tmp / v.name / "data"),
                   "GENFARM_STORAGE_URL": (tmp / v.name / "out").as_uri(),
                   "GENFARM_MODEL_PROFILE": "default",
                   "GENFARM_RECONCILE_INTERVAL": str(args.reconcile_interval)}
            start_worker(v, env)
            os.environ.clear()
            os.environ.update({**saved_env, **env})
            settings = Settings()
            v.submitter = make_submitter(settings, make_app(settings))
            v.engine = v.submitter.sessions.kw["bind"]
            v.poller = psycopg.connect(make_url(v.url).set(drivername="postgresql")
                                       .render_as_string(hide_password=False), autocommit=True)
        os.environ.clear()
        os.environ.update(saved_env)
        for v in variants:
            wait_ready(v)
        n = 0
        for _ in range(args.warmup):  # the model loads, caches fill, connections open
            for kind in kinds:
                for v in variants:
                    n += 1
                    one_job(v, kind, n, args.poll)
        samples: dict[str, dict[str, list[dict[str, Any]]]] = {
            v.name: {k: [] for k in kinds} for v in variants}
        for _ in range(args.jobs):  # take turns: every variant and kind sees the same noise
            for kind in kinds:
                for v in variants:
                    n += 1
                    time.sleep(args.gap)
                    samples[v.name][kind].append(one_job(v, kind, n, args.poll))
        time.sleep(1.0)  # the last unit's log line
        for v in variants:
            read_units(v)
        print(json.dumps({
            "benchmark": "latency", "jobs_per_kind": args.jobs, "idle_gap_s": args.gap,
            "poll_s": args.poll, "cpus": os.cpu_count(), "broker": f"redis ({args.redis})",
            "database": "postgresql", "storage": "local folder", "worker": "prefork, 1 process",
            "generate": "aether, profile default, 128x128",
            "variants": {v.name: {"tree": str(v.tree), "env": v.env,
                                  **{k: summarize(v, samples[v.name][k]) for k in kinds}}
                         for v in variants},
        }, indent=2))
    finally:
        for v in variants:
            stop(v.proc)
            if v.poller is not None:
                v.poller.close()
            if v.engine is not None:
                v.engine.dispose()
            if v.url:
                drop_pg_database(args.pg, v.url)
        stop(server)
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
