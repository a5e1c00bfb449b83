"""`genfarm`: submit manifests of generation jobs, run workers, watch batches, pull results."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from cli.io import MAX_MANIFEST_BYTES, ByteSize, Refused, human_bytes, printable, read_manifest
from cli.options import GenfarmGroup, friendly_errors, redact, settings_options
from jobs.settings import Settings


@click.group(cls=GenfarmGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="genfarm", prog_name="genfarm")
def cli() -> None:
    """genfarm: a render farm for generative media.

    \b
    Quick start (everything embedded under ./genfarm-data, no servers):
      genfarm demo
    \b
    The usual loop:
      genfarm db upgrade                        # create or migrate the database
      genfarm submit jobs.jsonl --project acme  # validate the whole file, then queue it
      genfarm worker                            # run jobs (one per GPU, or on the CPU)
      genfarm status BATCH                      # counts per state
      genfarm pull BATCH ./out                  # download and verify every output

    Settings come from GENFARM_* variables (or .env): GENFARM_DATABASE_URL,
    GENFARM_BROKER_URL, GENFARM_STORAGE_URL, GENFARM_DATA_DIR, GENFARM_MAX_BATCH ...
    """


# -- database -----------------------------------------------------------------------------
@cli.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True,
              help="Target revision (newer than the database's; see `genfarm db downgrade`).")
@settings_options
@friendly_errors
def db_upgrade(settings: Settings, revision: str) -> None:
    """Create or migrate the database schema."""
    from jobs.db import upgrade

    url = settings.resolved_database_url()
    done = upgrade(url, revision)
    if done.before == done.after:
        click.echo(printable(f"database {redact(url)} already at {_revision(done.after, done.head)}"))
    else:
        click.echo(printable(f"database {redact(url)} upgraded from {done.before or 'an empty schema'} "
                             f"to {_revision(done.after, done.head)}"))


@db.command("downgrade")
@click.option("--revision", required=True,
              help="Target revision: an older one, -1 for one step, or base (drops every table).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@settings_options
@friendly_errors
def db_downgrade(settings: Settings, revision: str, yes: bool) -> None:
    """Take the schema back to an older revision, dropping what the newer ones added."""
    from jobs.db import downgrade

    url = settings.resolved_database_url()
    if not yes:
        click.confirm(printable(f"downgrade {redact(url)} to {revision}? What newer revisions "
                                "added is dropped, data included"), abort=True)
    done = downgrade(url, revision)
    if done.before == done.after:
        click.echo(printable(f"database {redact(url)} already at {_revision(done.after, done.head)}"))
    else:
        click.echo(printable(f"database {redact(url)} downgraded from {done.before} "
                             f"to {_revision(done.after, done.head)}"))


def _revision(rev: str | None, head: str | None) -> str:
    if rev is None:
        return "base (no schema)"
    return f"{rev} (head)" if rev == head else rev


@db.command("current")
@settings_options
@friendly_errors
def db_current(settings: Settings) -> None:
    """Print the database's schema revision."""
    from jobs.db import current_revision, make_engine

    engine = make_engine(settings.resolved_database_url())
    click.echo(current_revision(engine) or "none (run `genfarm db upgrade`)")


# -- submit -------------------------------------------------------------------------------
@cli.command()
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--project", "-p", required=True, help="Project the batch belongs to.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default=None,
              help="Manifest format [default: from the file name, else jsonl].")
@click.option("--wait", is_flag=True, help="Show progress until every job has finished.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--force", is_flag=True,
              help="Run every job, even one identical to a job of this project that already "
              "succeeded (by default it reuses that job's outputs at no device time).")
@click.option("--dry-run", is_flag=True,
              help="Validate and estimate only: jobs per kind and model, device seconds, wall "
              "time; nothing is written.")
@click.option("--workers", "n_workers", type=click.IntRange(1, 100_000), default=None,
              help="--dry-run: the wall time on this many workers [default: the live workers "
              "serving these models, at least 1].")
@click.option("--max-bytes", type=ByteSize(), default=MAX_MANIFEST_BYTES,
              help=f"Refuse a manifest larger than this [default: {human_bytes(MAX_MANIFEST_BYTES)}].")
@settings_options
@friendly_errors
def submit(settings: Settings, manifest: str, project: str, fmt: str | None, wait: bool,
           as_json: bool, force: bool, dry_run: bool, n_workers: int | None,
           max_bytes: int) -> None:
    """Validate MANIFEST (JSONL or CSV, '-' for stdin) and queue it as one batch.

    \b
    One job per line, e.g.
      {"kind": "generate", "seed": 7, "width": 256, "height": 256, "yaw": 30}
      {"kind": "generate", "seed": {"range": [0, 100]}, "truncation": [0.5, 0.8]}
    The whole file is checked first: any bad line and nothing is written.
    Estimates come from device seconds measured on earlier runs of the same model,
    kind and size (else the model's benchmark figure); a project's budget
    (`genfarm budget`) refuses a submission whose estimate exceeds what is left.
    """
    from jobs.manifest import format_for
    from workers.app import make_submitter

    data = read_manifest(manifest, max_bytes)
    source = "stdin" if manifest == "-" else Path(manifest).name
    submitter = make_submitter(settings)
    if dry_run:
        from cli.usage import print_estimate

        specs = submitter.resolve(project, submitter.parse(
            data, format=fmt or format_for(manifest), source=source, project=project), source)
        print_estimate(settings, submitter, project, specs, n_workers, as_json, force)
        return
    result = submitter.submit_manifest(project, data, format=fmt or format_for(manifest),
                                       source=source, force=force)
    sessions = submitter.sessions
    if as_json and not wait:
        click.echo(json.dumps({"id": result.batch_id, **result.__dict__}))  # batch_id: older scripts
    elif not as_json:
        click.echo(result.batch_id)
        reused = (f"; {result.reused} reuse the outputs of identical jobs that succeeded "
                  "(--force runs them again)" if result.reused else "")
        click.echo(f"{result.job_count} jobs in {result.units} work units{reused}", err=True)
    if not result.published:
        click.echo(printable(f"warning: broker unavailable ({result.publish_error}); the jobs are "
                             "recorded and a worker's reconciler will publish them"), err=True)
    if wait:
        summary = wait_for_batch(sessions, result.batch_id)
        if as_json:
            click.echo(json.dumps(summary))
        sys.exit(0 if summary["status"] == "succeeded" else 1)


def wait_for_batch(sessions: Any, batch_id: str, poll_s: float = 0.5) -> dict[str, Any]:
    """Progress bar until the batch is finalized; returns its summary."""
    from tqdm import tqdm

    from jobs.batches import resolve_batch, summarize

    with sessions() as session:
        total = resolve_batch(session, batch_id).job_count
    with tqdm(total=total, unit="job", file=sys.stderr, dynamic_ncols=True) as bar:
        while True:
            with sessions() as session:
                batch = resolve_batch(session, batch_id)
                summary = summarize(session, batch)
            bar.set_postfix({k: v for k, v in summary.as_dict()["counts"].items() if v},
                            refresh=False)
            bar.update(summary.done - bar.n)
            if batch.finished_at is not None:
                break
            time.sleep(poll_s)
    return summary.as_dict()


# -- status -------------------------------------------------------------------------------
@cli.command()
@click.argument("batch", required=False)
@click.option("--project", "-p", default=None, help="Only this project's batches.")
@click.option("--failed", "show_failed", is_flag=True, help="List failed jobs with their errors.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--wait", is_flag=True, help="Show progress until BATCH has finished (as `submit "
              "--wait` does), then its status; exit 0 if it succeeded, else 1.")
@settings_options
@friendly_errors
def status(settings: Settings, batch: str | None, project: str | None, show_failed: bool,
           as_json: bool, wait: bool) -> None:
    """Counts per state for BATCH (an id or a prefix of 6+ characters), or recent batches.
    Given a job's id, shows that job (as `genfarm job` does)."""
    from sqlalchemy import select

    from cli.jobview import batch_or_job, show_job
    from jobs.batches import list_batches, summarize
    from jobs.db import make_engine, session_factory
    from jobs.models import Job
    from jobs.presence import unserved

    if wait and batch is None:
        raise Refused("--wait needs a BATCH (see 'genfarm status --help')")
    sessions = session_factory(make_engine(settings.resolved_database_url()))
    if wait:
        assert batch is not None
        with sessions() as session:
            target = batch_or_job(session, batch, project)
        if not isinstance(target, Job):
            wait_for_batch(sessions, target.id)
    with sessions() as session:
        if batch is None:
            rows = [summarize(session, b).as_dict() for b in list_batches(session, project)]
            if as_json:
                click.echo(json.dumps(rows, indent=2))
                return
            if not rows:
                click.echo("no batches yet")
            for r in rows:
                click.echo(printable(f"{r['id']}  {r['project']:<12} {r['status']:<10} "
                                     f"{r['done']}/{r['jobs']} done  {r['source']}"))
            return
        b = batch_or_job(session, batch, project)
        if isinstance(b, Job):
            show_job(session, b, as_json)
            return
        summary = summarize(session, b).as_dict()
        failures = session.execute(
            select(Job.id, Job.index, Job.error).where(Job.batch_id == b.id, Job.status == "failed")
            .order_by(Job.index).limit(1000)).all() if show_failed or as_json else []
        waiting = unserved(session, 3 * settings.reconcile_interval, b.id)
    if as_json:
        summary["failures"] = [{"job_id": j, "index": i, "error": e} for j, i, e in failures]
        summary["unserved_models"] = waiting
        click.echo(json.dumps(summary, indent=2))
        if wait:
            sys.exit(0 if summary["status"] == "succeeded" else 1)
        return
    click.echo(printable(f"batch     {summary['id']}  ({summary['project']}, {summary['source']})"))
    click.echo(f"status    {summary['status']}   {summary['done']}/{summary['jobs']} done "
               f"({summary['progress']:.0%}), {summary['device_seconds']:.1f} device-seconds")
    click.echo("jobs      " + "  ".join(f"{k} {v}" for k, v in summary["counts"].items())
               + (f"  (reused {summary['reused']})" if summary["reused"] else ""))
    if summary["manifest_key"]:
        click.echo(printable(f"manifest  {summary['manifest_key']}"))
    for model, count in sorted(waiting.items()):
        click.echo(printable(f"waiting   {count} queued jobs wait for model {model}: no running "
                             f"worker serves it (start one: genfarm worker --models {model})"))
    for job_id, index, error in failures:
        click.echo(printable(f"failed    #{index} {job_id}: {error}"))
    if wait:
        sys.exit(0 if summary["status"] == "succeeded" else 1)


# -- pull ---------------------------------------------------------------------------------
@cli.command()
@click.argument("batch")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@settings_options
@friendly_errors
def pull(settings: Settings, batch: str, dest: Path) -> None:
    """Download every output of BATCH into DEST, verifying each sha256.

    Files land at DEST/<job index>-<job id>/<name>, plus DEST/manifest.jsonl.
    Files already present with the right checksum are skipped.
    """
    from tqdm import tqdm

    from jobs.batches import batch_outputs, manifest_lines, resolve_batch
    from jobs.db import make_engine, session_factory
    from storage import open_storage
    from storage.keys import safe_part

    sessions = session_factory(make_engine(settings.resolved_database_url()))
    storage = open_storage(settings.resolved_storage_url(), endpoint_url=settings.s3_endpoint_url)
    with sessions() as session:
        b = resolve_batch(session, batch)
        outputs = batch_outputs(session, b.id)
        manifest = manifest_lines(session, b.id)
    dest.mkdir(parents=True, exist_ok=True)
    fetched = skipped = 0
    for job_id, index, out in tqdm(outputs, unit="file", file=sys.stderr, dynamic_ncols=True):
        path = dest / f"{index:06d}-{safe_part(job_id)}" / safe_part(out.name)
        if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == out.sha256:
            skipped += 1
            continue
        data = storage.get(out.key, sha256=out.sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)
        fetched += 1
    (dest / "manifest.jsonl").write_bytes(manifest)
    click.echo(printable(f"{fetched} downloaded, {skipped} already present, all sha256 verified "
                         f"-> {dest}"))


# -- reconcile ----------------------------------------------------------------------------
@cli.command()
@click.option("--loop", is_flag=True, help="Keep running, one pass every reconcile interval.")
@settings_options
@friendly_errors
def reconcile(settings: Settings, loop: bool) -> None:
    """Requeue jobs of lost workers, republish lost messages, finalize finished batches."""
    from workers.app import make_app, publisher
    from workers.reconciler import Reconciler

    rec = Reconciler(settings, publisher(make_app(settings)))
    while True:
        click.echo(json.dumps(rec.run_once().as_dict()))
        if not loop:
            return
        time.sleep(settings.reconcile_interval)


from cli import jobview as _jobview  # noqa: E402
from cli import manage as _manage  # noqa: E402
from cli import models as _models  # noqa: E402
from cli import serve as _serve  # noqa: E402
from cli import sheet as _sheet  # noqa: E402
from cli import usage as _usage  # noqa: E402
from cli import worker as _worker  # noqa: E402

_worker.register(cli)
_models.register(cli)
_manage.register(cli)
_usage.register(cli)
_sheet.register(cli)
_jobview.register(cli)
_serve.register(cli)


def main() -> None:
    cli(prog_name="genfarm")
