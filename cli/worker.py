"""`genfarm worker` and `genfarm demo`: the commands that run jobs (and so, lazily, torch)."""

from __future__ import annotations

import os
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import click
from celery.exceptions import SecurityWarning

from cli.io import printable
from cli.options import friendly_errors, redact, settings_options
from jobs.settings import Settings


class Concurrency(click.ParamType):
    """A number of worker processes (1 to 256), or ``auto``."""

    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int | None:
        if value is None or str(value).strip().lower() == "auto":
            return None
        try:
            number = int(str(value).strip())
        except ValueError:
            self.fail(f"{value!r} is neither a number of processes nor auto", param, ctx)
        if not 1 <= number <= 256:
            self.fail(f"{number} processes: expected 1 to 256, or auto", param, ctx)
        return number


@click.command()
@click.option("--models", "-m", default=None, metavar="A,B",
              help="Comma-separated models to serve (see `genfarm models`) [default: every "
                   "model this machine can load].")
@click.option("--queues", "-Q", default=None,
              help="Comma-separated Celery queues, for ops [default: the models' queues].")
@click.option("--max-batch", type=click.IntRange(1, 4096), default=None,
              help="Jobs per forward pass [GENFARM_MAX_BATCH, default 16].")
@click.option("--concurrency", "-c", type=Concurrency(), default="auto", show_default=True,
              help="Worker processes, or auto: one per GPU (each on its own), else one per CPU core. "
                   "On a CPU the cores are shared among the processes (GENFARM_CPU_THREADS "
                   "sets each one's torch threads): small passes keep the cores busier as "
                   "separate processes than as one process's threads. Each process loads its "
                   "own copy of the models.")
@click.option("--pool", type=click.Choice(["prefork", "solo", "threads"]), default="prefork",
              show_default=True, help="Celery pool: prefork isolates each process.")
@click.option("--max-tasks-per-child", type=click.IntRange(1), default=None,
              help="Recycle a worker process after this many work units.")
@click.option("--max-memory-per-child", type=click.IntRange(1), default=None, metavar="KIB",
              help="Recycle a worker process once its resident memory passes this (KiB).")
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@settings_options
@friendly_errors
def worker(settings: Settings, models: str | None, queues: str | None, max_batch: int | None,
           concurrency: int | None, pool: str, max_tasks_per_child: int | None,
           max_memory_per_child: int | None, loglevel: str) -> None:
    """Run a worker: it takes work units of its models from the broker and runs their jobs in
    batches. Each model has its own queue, so a GPU box serving one model never pulls another's
    jobs: `genfarm worker --models sd-xl` on one, `--models aether` on another.

    The models load in each worker process after it starts (CUDA is never touched
    before the fork), on CUDA when present, else on the CPU.
    """
    from jobs.catalog import iter_checks, load_catalog
    from workers.app import make_app

    if max_batch is not None:
        settings = settings.model_copy(update={"max_batch": max_batch})
    catalog = load_catalog(settings)
    checks = {c.entry.name: c for c in iter_checks(catalog)}
    if models:
        served = [m.strip() for m in models.split(",") if m.strip()]
        unknown = [m for m in served if m not in catalog.models]
        if unknown:
            raise click.UsageError(f"unknown model(s) {', '.join(unknown)}; the models file has "
                                   f"{', '.join(catalog.models)}")
        broken = [f"{m}: {'; '.join(checks[m].problems)}" for m in served if checks[m].problems]
        if broken:
            raise click.ClickException("cannot serve " + " | ".join(broken))
    else:
        served = [name for name, c in checks.items() if c.loadable]
        for name, c in checks.items():
            if not c.loadable:
                click.echo(printable(f"warning: not serving model {name}: "
                                     f"{'; '.join(c.problems)}"), err=True)
        if not served:
            raise click.ClickException("this machine can load none of the models")
    click.echo(f"serving models: {', '.join(served)}", err=True)
    processes, threads = pool_size(settings, concurrency, pool)
    settings = settings.model_copy(update={"cpu_threads": threads})
    click.echo(f"worker processes: {processes}"
               + (f", torch CPU threads: {threads} each" if threads else ""), err=True)
    torch_threads_wait()
    app = make_app(settings, models=served)
    argv = ["worker", "-Q", queues or ",".join(catalog.queues(served)), "-c", str(processes),
            "-P", pool,
            "-l", loglevel, "-E", "-n", f"genfarm-{os.getpid()}@%h", "--without-mingle"]
    if max_tasks_per_child:
        argv += ["--max-tasks-per-child", str(max_tasks_per_child)]
    if max_memory_per_child:
        argv += ["--max-memory-per-child", str(max_memory_per_child)]
    app.worker_main(argv)


def cpu_cores() -> int:
    """The cores this process may run on (a container's or taskset's share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def visible_gpus(settings: Settings, dev: Path = Path("/dev")) -> int:
    """How many GPUs the worker's processes will compute on, told without importing torch (the
    pool processes are forked from this one, which must not touch CUDA). GENFARM_DEVICE when
    set: none for the CPU, one for a numbered device (``cuda:1``); otherwise the NVIDIA device
    nodes, or as many as CUDA_VISIBLE_DEVICES lists (up to an entry of -1, which hides the
    rest, as CUDA reads it)."""
    if settings.device and settings.device.startswith("cpu"):
        return 0
    if settings.device and settings.device != "cuda":
        return 1  # a numbered CUDA device, or another accelerator (mps, xpu): one
    gpus = sum(1 for p in dev.glob("nvidia*") if p.name.removeprefix("nvidia").isdigit())
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        entries = [e.strip() for e in listed.split(",")]
        if "-1" in entries:
            entries = entries[:entries.index("-1")]
        gpus = min(gpus, len([e for e in entries if e]))
    return max(gpus, 1) if settings.device == "cuda" else gpus


def pool_size(settings: Settings, concurrency: int | None, pool: str,
              dev: Path = Path("/dev")) -> tuple[int, int | None]:
    """(worker processes, torch CPU threads for each, None for torch's own choice).

    ``concurrency`` None is auto: one process per GPU on a GPU machine (each computes on its
    own: the pool process numbered i on GPU i); on a CPU, one per core (prefork; solo and
    threads pools run one), each with one thread. Passes of a small
    model are hundreds of short operations, too short for a second thread to share well, and
    two cores ran two one-thread processes at 1.0 to 1.3x one loop's images/s on both
    (benchmarks/pipeline.py). Explicit ``--concurrency`` shares the cores evenly among the
    processes. GENFARM_CPU_THREADS (or OMP_NUM_THREADS, read by torch itself) chooses instead."""
    gpus, cores = visible_gpus(settings, dev), cpu_cores()
    gpu = gpus > 0
    processes = concurrency or ((gpus if gpu else cores) if pool == "prefork" else 1)
    if settings.cpu_threads or "OMP_NUM_THREADS" in os.environ or (gpu and processes == 1):
        return processes, settings.cpu_threads
    return processes, max(1, cores // processes)  # (on GPUs, the CPU work beside them)


def torch_threads_wait() -> None:
    """Torch's CPU threads (OpenMP) spin a bounded while (GOMP_SPINCOUNT, about 3 ms) before
    they sleep between the operations of a pass, unless the environment chooses
    (OMP_WAIT_POLICY or GOMP_SPINCOUNT): set before the pool processes import torch, which
    reads it once.

    Small passes are hundreds of short operations: threads that sleep at once pay a wake-up
    for each. On 2 shared cores a float64 pass of one 128x128 image ran at 39 images/s
    sleeping and 56 spinning (benchmarks/pipeline.py, the worker's measured pass sizes), and
    an idle worker's one job took 38 ms of device time sleeping, 32 spinning
    (benchmarks/latency.py): the bound keeps a spinning thread from holding a core that the
    uploads, the database and the broker need for longer than that."""
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", "300000")


@click.command()
@click.option("--project", default="demo", show_default=True)
@settings_options
@friendly_errors
def demo(settings: Settings, project: str) -> None:
    """The whole pipeline on this machine: migrate, submit a small manifest, run a worker
    in this process until the batch is done, and show where the images are."""
    from cli.main import wait_for_batch
    from jobs.catalog import load_catalog
    from jobs.db import upgrade
    from workers.app import make_app, make_submitter

    url = settings.resolved_database_url()
    click.echo(printable(f"database: {redact(url)}\nbroker:   {redact(settings.resolved_broker_url())}\n"
                         f"storage:  {settings.resolved_storage_url()}", multiline=True))
    upgrade(url)
    torch_threads_wait()
    catalog = load_catalog(settings)
    family = next((catalog.family(m) for m in catalog.models if catalog.family(m).demo), None)
    if family is None:
        raise click.ClickException("no model of the models file has a demo manifest")
    app = make_app(settings)
    submitter = make_submitter(settings, app)
    sessions = submitter.sessions
    # force: the demo shows the pipeline at work, not the outputs of an earlier demo reused
    result = submitter.submit_manifest(project, family.demo, source="demo.jsonl", force=True)
    click.echo(f"submitted batch {result.batch_id}: {result.job_count} jobs "
               f"({family.demo_summary or family.summary})")

    # the demo runs where it is started; Celery's warning about running as root is noise here
    warnings.filterwarnings("ignore", category=SecurityWarning)
    worker = app.Worker(queues=catalog.queues(), pool="solo", concurrency=1, loglevel="WARNING",
                        without_mingle=True, without_gossip=True, without_heartbeat=True,
                        hostname=f"genfarm-demo-{os.getpid()}@localhost", quiet=True,
                        redirect_stdouts=False)
    summary: dict[str, Any] = {}

    def watch() -> None:
        try:
            summary.update(wait_for_batch(sessions, result.batch_id,
                                          every_s=settings.progress_seconds))
        finally:
            worker.stop(in_sighandler=False)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.perf_counter()
    worker.start()
    watcher.join(timeout=10)
    elapsed = time.perf_counter() - started
    counts = summary.get("counts", {})
    click.echo(f"batch {summary.get('status', 'unfinished')} in {elapsed:.1f}s: "
               + ", ".join(f"{k} {v}" for k, v in counts.items() if v))
    storage_url = settings.resolved_storage_url()
    where = storage_url
    if storage_url.startswith("file://"):
        from storage import open_storage

        store = open_storage(storage_url)
        where = str(store.path_of(store.batch_prefix(project, result.batch_id)))  # type: ignore[attr-defined]
    click.echo(printable(f"images:   {where}"))
    click.echo(f"manifest: {summary.get('manifest_key')}")
    click.echo(f"next:     genfarm pull {result.batch_id[:8]} ./{project}-images")
    sys.exit(0 if summary.get("status") == "succeeded" else 1)


@click.group()
def model() -> None:
    """Models and their checkpoints."""


@model.command("export")
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--profile", default=None,
              help="Size profile, where the family has several [default: GENFARM_MODEL_PROFILE].")
@settings_options
@friendly_errors
def model_export(settings: Settings, name: str, file: Path, profile: str | None) -> None:
    """Write model NAME's weights to FILE (safetensors): its checkpoint's, or the seeded
    reference weights. Declare the file as the model's weights to load it back."""
    from jobs.catalog import load_catalog

    catalog = load_catalog(settings)
    if name not in catalog.models:
        raise click.UsageError(f"unknown model {name!r}; the models file has "
                               f"{', '.join(catalog.models)}")
    family = catalog.family(name).load_worker()(catalog.models[name], settings)
    if not hasattr(family, "export_weights"):
        raise click.ClickException(f"the {catalog.family(name).name} family has no weights "
                                   "to export")
    digest = family.export_weights(file, profile)
    click.echo(printable(f"{file}  sha256:{digest}"))


@model.command("train")
@click.argument("name")
@click.option("--out", "file", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the trained weights (safetensors).")
@click.option("--profile", default=None,
              help="Size profile, where the family has several [default: GENFARM_MODEL_PROFILE].")
@click.option("--steps", type=click.IntRange(1), default=None,
              help="Training steps [default: the family's].")
@click.option("--seed", type=int, default=0, show_default=True, help="The one seed of the run.")
@settings_options
@friendly_errors
def model_train(settings: Settings, name: str, file: Path, profile: str | None,
                steps: int | None, seed: int) -> None:
    """Train model NAME's reference weights (the built-in generator learns procedural 3D
    scenes) and write them to FILE. Declare the file as the model's weights to use it."""
    from jobs.catalog import load_catalog

    catalog = load_catalog(settings)
    if name not in catalog.models:
        raise click.UsageError(f"unknown model {name!r}; the models file has "
                               f"{', '.join(catalog.models)}")
    family = catalog.family(name).load_worker()(catalog.models[name], settings)
    if not hasattr(family, "train_weights"):
        raise click.ClickException(f"the {catalog.family(name).name} family cannot train weights")
    digest = family.train_weights(file, profile, steps, seed, log=click.echo)
    click.echo(printable(f"{file}  sha256:{digest}"))


@click.command()
@click.option("--all", "everywhere", is_flag=True,
              help="Any worker of the farm answers [default: only those on this host].")
@click.option("--timeout", type=click.FloatRange(0.1, 60), default=3.0, show_default=True,
              help="Seconds to wait for answers.")
@settings_options
@friendly_errors
def ping(settings: Settings, everywhere: bool, timeout: float) -> None:
    """Exit 0 when a worker on this host answers a ping over the farm's broker, else 1: the
    health check of a worker container (its host name is the container's).

    Workers name themselves genfarm-PID@HOST; this matches them by HOST, whatever their PID.
    """
    import socket

    from workers.app import make_app

    host = socket.gethostname()
    replies = make_app(settings).control.ping(timeout=timeout) or []
    names = sorted(name for reply in replies for name in reply)
    mine = [n for n in names if everywhere or n.rpartition("@")[2] == host]
    if not mine:
        where = "in the farm" if everywhere else f"on {host}"
        click.echo(printable(f"no worker {where} answered within {timeout:g}s"
                             + (f" (others did: {', '.join(names)})" if names else "")), err=True)
        sys.exit(1)
    click.echo(printable("\n".join(f"{n}: pong" for n in mine)))


def register(group: click.Group) -> None:
    group.add_command(ping)
    group.add_command(worker)
    group.add_command(demo)
    group.add_command(model)
