"""The default generate model through the whole farm against the same model in a bare loop.

    python benchmarks/pipeline.py [--jobs 480] [--size 128] [--rounds 3] [--embedded]
                                  [--worker-env K=V ...] [--worker-arg ARG ...] [--logs DIR]

Farm: one real `genfarm worker` as started by default (`--concurrency auto`: on a CPU-only
machine a pool process per core, one torch thread each; pass sizes measured, see
workers/passes.py), PostgreSQL, Redis and a local folder; a warm-up batch first (it loads the
model and lets the worker measure its pass sizes), then each round submits JOBS generate jobs
and times submission to the batch's finish. Bare loop: the same family in this process with
torch's default threads, on the same jobs: forward pass, PNG encoding, a file written per job,
at each pass size of 1, 2, 4, 8 and 16. For context, the bare loop split over one-thread
processes, one per core (each on its share of the jobs, at pass sizes 1, 2 and 4): what the
farm's processes could make with no farm around them. Rounds alternate them, so all see the
same noise on a shared machine; the summary compares medians over rounds, each loop's at the
pass size with the best median.
``--embedded`` also times the farm on its embedded default (SQLite, the filesystem broker).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import select  # noqa: E402

from benchmarks.overhead import BIN, start, stop, wait_ready, wait_until  # noqa: E402
from cli.worker import cpu_cores  # noqa: E402
from jobs.db import make_engine, session_factory, upgrade  # noqa: E402
from jobs.models import Batch, PassSize  # noqa: E402
from jobs.settings import Settings  # noqa: E402
from tests.conftest import create_pg_database, drop_pg_database  # noqa: E402

SIZES = [1, 2, 4, 8, 16]
PARALLEL_SIZES = [1, 2, 4]


def line(n: int, size: int, offset: int) -> dict[str, Any]:
    return {"kind": "generate", "seed": {"range": [offset, offset + n]}, "width": size,
            "height": size, "yaw": 20}


def farm_round(env: dict[str, str], n: int, size: int, offset: int) -> float:
    """Seconds from submission to the batch's finish, through the CLI's submission path."""
    from workers.app import make_submitter

    settings = Settings(**{k.removeprefix("GENFARM_").lower(): v for k, v in env.items()
                           if k.startswith("GENFARM_")})
    submitter = make_submitter(settings)
    t0 = time.perf_counter()
    result = submitter.submit_manifest("bench", json.dumps(line(n, size, offset)), force=True)

    finished = select(Batch.finished_at).where(Batch.id == result.batch_id)
    return wait_until(submitter.sessions.kw["bind"], lambda conn: conn.scalar(finished) is not None,
                      poll=0.05) - t0


def _loop(fam: Any, jobs: list[dict[str, Any]], batch: int, folder: Path, name: str) -> float:
    """Seconds to run ``jobs`` in passes of ``batch``: forward, encode, a file written per job
    (named after ``name``, so loops sharing the folder write their own files)."""
    from benchmarks.models import contexts

    ctxs = contexts("generate", jobs, None)
    fam.run(ctxs[:1] * batch)  # one pass to warm this size up, as the farm's first pass
    t0 = time.perf_counter()
    for start_ in range(0, len(ctxs), batch):
        chunk = ctxs[start_:start_ + batch]
        for ctx, arts in zip(chunk, fam.run(chunk), strict=True):
            for art in arts:
                (folder / f"{name}{ctx.job_id}-{art.name}").write_bytes(art.encode())
    return time.perf_counter() - t0


def bare_jobs(n: int, size: int, offset: int) -> list[dict[str, Any]]:
    from benchmarks.models import gen_params

    return [{**gen_params(offset + i, size), "yaw": 20.0} for i in range(n)]


def bare_round(n: int, size: int, offset: int, folder: Path) -> dict[int, float]:
    """Images per second of the family at each pass size, torch's default threads."""
    from benchmarks.models import aether

    fam = aether(Settings(model_profile="default"))
    jobs = bare_jobs(n, size, offset)
    return {batch: n / _loop(fam, jobs, batch, folder, "") for batch in SIZES}


def _share(index: int, procs: int, n: int, size: int, offset: int, folder: str,
           barrier: Any, results: Any) -> None:
    """One process of the parallel bare loop: one torch thread, every procs-th job."""
    import torch

    from benchmarks.models import aether

    torch.set_num_threads(1)
    fam = aether(Settings(model_profile="default"))
    jobs = bare_jobs(n, size, offset)[index::procs]
    for batch in PARALLEL_SIZES:
        barrier.wait()  # all start each size together
        results.put((batch, _loop(fam, jobs, batch, Path(folder), f"p{index}-")))


def parallel_round(n: int, size: int, offset: int, folder: Path) -> dict[int, float]:
    """Images per second of the bare loop split over one-thread processes, one per core."""
    import multiprocessing

    procs = cpu_cores()
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(procs), ctx.Queue()
    children = [ctx.Process(target=_share, args=(i, procs, n, size, offset, str(folder),
                                                 barrier, results)) for i in range(procs)]
    for child in children:
        child.start()
    took: dict[int, float] = {}
    for _ in range(procs * len(PARALLEL_SIZES)):
        batch, seconds = results.get(timeout=600)
        took[batch] = max(took.get(batch, 0.0), seconds)  # the slowest share ends the loop
    for child in children:
        child.join(timeout=60)
    return {batch: n / took[batch] for batch in PARALLEL_SIZES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=480)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--embedded", action="store_true",
                        help="also the farm on SQLite and the filesystem broker")
    parser.add_argument("--pg", default=os.environ.get(
        "GENFARM_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--worker-env", action="append", default=[], metavar="K=V",
                        help="an environment variable for the farm's workers only (repeatable), "
                             "e.g. OMP_WAIT_POLICY=PASSIVE")
    parser.add_argument("--worker-arg", action="append", default=[], metavar="ARG",
                        help="an argument for `genfarm worker` (repeatable), e.g. "
                             "--worker-arg=--concurrency --worker-arg=1")
    parser.add_argument("--logs", type=Path, help="keep the workers' logs (each unit's phases) here")
    args = parser.parse_args()
    worker_env = dict(kv.split("=", 1) for kv in args.worker_env)
    worker_cmd = [str(BIN / "genfarm"), "worker", "-l", "INFO", *args.worker_arg]

    tmp = Path(tempfile.mkdtemp(prefix="genfarm-pipeline-"))
    url = create_pg_database(args.pg)
    procs: list[subprocess.Popen[bytes]] = []
    farms = {"production": {"GENFARM_DATABASE_URL": url, "GENFARM_BROKER_URL": args.redis,
                            "GENFARM_STORAGE_URL": (tmp / "out").as_uri()}}
    if args.embedded:
        farms["embedded"] = {"GENFARM_DATA_DIR": str(tmp / "embedded")}
    try:
        import redis

        redis.Redis.from_url(args.redis).flushdb()
        workers = {}
        for name, env in farms.items():
            env.update({"GENFARM_MODEL_PROFILE": "default", "GENFARM_RECONCILE_INTERVAL": "3600",
                        **worker_env})
            env.setdefault("GENFARM_DATA_DIR", str(tmp / "data"))
            upgrade(Settings(**{k.removeprefix("GENFARM_").lower(): v for k, v in env.items()
                                }).resolved_database_url())
            log = tmp / f"{name}-worker.log"
            workers[name] = start(worker_cmd, env, log)
            procs.append(workers[name])
            wait_ready(log, timeout=300)
            farm_round(env, 160, args.size, 10_000_000)  # warm-up: the model, its pass sizes
            stop(workers[name])  # one worker at a time: they would share the two cores
        rounds = []
        for r in range(args.rounds):
            offset = (r + 1) * 100_000
            entry: dict[str, Any] = {}
            for name, env in farms.items():
                log = tmp / f"{name}-worker-{r}.log"
                workers[name] = start(worker_cmd, env, log)
                procs.append(workers[name])
                wait_ready(log, timeout=300)
                # the pool processes' first passes (a unit or more each): loading, warming up
                farm_round(env, 160, args.size, offset + 50_000)
                entry[f"farm_{name}_images_per_s"] = round(
                    args.jobs / farm_round(env, args.jobs, args.size, offset), 2)
                stop(workers[name])
            out = tmp / f"bare-{r}"
            out.mkdir()
            rates = bare_round(args.jobs, args.size, offset, out)
            split = parallel_round(args.jobs, args.size, offset, out)
            shutil.rmtree(out)
            best = max(rates, key=lambda b: rates[b])
            entry.update(bare_images_per_s={b: round(v, 2) for b, v in rates.items()},
                         bare_best_batch=best, bare_best_images_per_s=round(rates[best], 2),
                         parallel_images_per_s={b: round(v, 2) for b, v in split.items()})
            for name in farms:
                entry[f"ratio_{name}"] = round(entry[f"farm_{name}_images_per_s"]
                                               / rates[best], 3)
            rounds.append(entry)
            print(json.dumps(entry), file=sys.stderr)
        engine = make_engine(url)
        with session_factory(engine)() as s:
            chosen = {p.key: {"best": p.best, "rates": p.rates} for p in s.scalars(
                select(PassSize))}
        engine.dispose()
        # medians over rounds, the bare loop's per pass size: its best size is the best median,
        # not the luckiest round (a maximum of noisy rates overstates the loop)
        bare = {b: statistics.median(e["bare_images_per_s"][b] for e in rounds) for b in SIZES}
        best = max(bare, key=lambda b: bare[b])
        split = {b: statistics.median(e["parallel_images_per_s"][b] for e in rounds)
                 for b in PARALLEL_SIZES}
        split_best = max(split.values())
        median: dict[str, Any] = {"bare_images_per_s": bare, "bare_best_batch": best,
                                  "bare_best_images_per_s": round(bare[best], 2),
                                  "parallel_images_per_s": split,
                                  "parallel_best_images_per_s": round(split_best, 2)}
        for name in farms:
            farm = statistics.median(e[f"farm_{name}_images_per_s"] for e in rounds)
            median[f"farm_{name}_images_per_s"] = farm
            median[f"ratio_{name}"] = round(farm / bare[best], 3)
            median[f"ratio_{name}_to_parallel"] = round(farm / split_best, 3)
        print(json.dumps({
            "benchmark": "pipeline", "jobs": args.jobs, "size": args.size,
            "model": "aether (default profile, shipped weights)", "cpus": os.cpu_count(),
            "compute": "float64 on the CPU (GENFARM_EXACT_CPU=true, the default)",
            "farm": "one genfarm worker; production: PostgreSQL, Redis, local folder",
            "worker_args": args.worker_arg, "worker_env": worker_env,
            "bare": "one process, torch's default threads; parallel: one one-thread process "
                    f"per core ({cpu_cores()})",
            "pass_sizes_measured": chosen, "rounds": rounds, "median": median,
            "ratio": median["ratio_production"],
        }, indent=2))
    finally:
        for proc in procs:
            if proc.poll() is None:
                stop(proc)
        drop_pg_database(args.pg, url)
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
            for log_file in tmp.glob("*.log"):
                shutil.copy(log_file, args.logs)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
