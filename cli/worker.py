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

from cli.options import friendly_errors, settings_options
from jobs.settings import Settings

DEMO_MANIFEST = b"""\
{"kind": "generate", "seed": {"range": [0, 4]}, "yaw": [-30, 0, 30], "width": 128, "height": 128}
{"kind": "generate", "seed": 42, "count": 4, "truncation": 0.5, "pitch": 15, "width": 128, "height": 128}
{"kind": "edit", "op": "rerender", "source": {"line": 2}, "yaw": 60, "pitch": 15}
{"kind": "video", "mode": "orbit", "seed": 7, "frames": 48, "fps": 24, "pitch": 10}
"""


@click.command()
@click.option("--queues", "-Q", default=None, help="Comma-separated queues [default: all kinds].")
@click.option("--max-batch", type=click.IntRange(1, 4096), default=None,
              help="Jobs per forward pass [GENFARM_MAX_BATCH, default 16].")
@click.option("--concurrency", "-c", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Worker processes (one per GPU; on a CPU, one uses every core).")
@click.option("--pool", type=click.Choice(["prefork", "solo", "threads"]), default="prefork",
              show_default=True, help="Celery pool: prefork isolates each process.")
@click.option("--max-tasks-per-child", type=click.IntRange(1), default=None,
              help="Recycle a worker process after this many work units.")
@click.option("--max-memory-per-child", type=click.IntRange(1), default=None, metavar="KIB",
              help="Recycle a worker process once its resident memory passes this (KiB).")
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@settings_options
@friendly_errors
def worker(settings: Settings, queues: str | None, max_batch: int | None, concurrency: int,
           pool: str, max_tasks_per_child: int | None, max_memory_per_child: int | None,
           loglevel: str) -> None:
    """Run a worker: it takes work units from the broker and runs their jobs in batches.

    The model loads in each worker process after it starts (CUDA is never touched
    before the fork), on CUDA when present, else on the CPU.
    """
    from workers.app import QUEUES, make_app

    if max_batch is not None:
        settings = settings.model_copy(update={"max_batch": max_batch})
    app = make_app(settings)
    argv = ["worker", "-Q", queues or ",".join(QUEUES), "-c", str(concurrency), "-P", pool,
            "-l", loglevel, "-E", "-n", f"genfarm-{os.getpid()}@%h", "--without-mingle"]
    if max_tasks_per_child:
        argv += ["--max-tasks-per-child", str(max_tasks_per_child)]
    if max_memory_per_child:
        argv += ["--max-memory-per-child", str(max_memory_per_child)]
    app.worker_main(argv)


@click.command()
@click.option("--project", default="demo", show_default=True)
@settings_options
@friendly_errors
def demo(settings: Settings, project: str) -> None:
    """The whole pipeline on this machine: migrate, submit a small manifest, run a worker
    in this process until the batch is done, and show where the images are."""
    from cli.main import wait_for_batch
    from jobs.db import make_engine, session_factory, upgrade
    from jobs.manifest import parse_manifest
    from jobs.submit import submit as submit_batch
    from workers.app import QUEUES, make_app, publisher

    url = settings.resolved_database_url()
    click.echo(f"database: {url}\nbroker:   {settings.resolved_broker_url()}\n"
               f"storage:  {settings.resolved_storage_url()}")
    upgrade(url)
    specs = parse_manifest(DEMO_MANIFEST, source="demo.jsonl")
    sessions = session_factory(make_engine(url))
    app = make_app(settings)
    result = submit_batch(sessions, project, specs, publisher(app), unit_size=settings.unit_size,
                          source="demo.jsonl")
    click.echo(f"submitted batch {result.batch_id}: {result.job_count} jobs "
               "(generate, camera re-render edits, an orbit video)")

    # the demo runs where it is started; Celery's warning about running as root is noise here
    warnings.filterwarnings("ignore", category=SecurityWarning)
    worker = app.Worker(queues=QUEUES, pool="solo", concurrency=1, loglevel="WARNING",
                        without_mingle=True, without_gossip=True, without_heartbeat=True,
                        hostname=f"genfarm-demo-{os.getpid()}@localhost", quiet=True,
                        redirect_stdouts=False)
    summary: dict[str, Any] = {}

    def watch() -> None:
        try:
            summary.update(wait_for_batch(sessions, result.batch_id))
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
    click.echo(f"images:   {where}")
    click.echo(f"manifest: {summary.get('manifest_key')}")
    click.echo(f"next:     genfarm pull {result.batch_id[:8]} ./{project}-images")
    sys.exit(0 if summary.get("status") == "succeeded" else 1)


@click.group()
def model() -> None:
    """Models and their checkpoints."""


@model.command("export")
@click.argument("name", type=click.Choice(["aether"]))
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--profile", type=click.Choice(["tiny", "default", "large"]), default=None,
              help="Size profile [default: GENFARM_MODEL_PROFILE].")
@settings_options
@friendly_errors
def model_export(settings: Settings, name: str, file: Path, profile: str | None) -> None:
    """Write NAME's weights to FILE (safetensors): the configured checkpoint's, or the seeded
    reference weights. Point GENFARM_CHECKPOINT at the file to load it back."""
    from workers.models.registry import export_checkpoint

    digest = export_checkpoint(name, profile or settings.model_profile, file, settings)
    click.echo(f"{file}  sha256:{digest}")


def register(group: click.Group) -> None:
    group.add_command(worker)
    group.add_command(demo)
    group.add_command(model)
