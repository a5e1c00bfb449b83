"""`genfarm`: submit manifests of generation jobs, run workers, watch batches, pull results."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from cli.io import (
    MAX_MANIFEST_BYTES,
    ByteSize,
    Refused,
    human_bytes,
    human_duration,
    printable,
    read_manifest,
)
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
@click.option("--name", default="", help="The batch's name, shown by status and sheets "
              "(e.g. 'sh010 lookdev v3'); `status --name` finds it.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="A label of the batch, repeatable: --label shot=010 --label artist=mia. "
              "status, usage and the API filter by them.")
@click.option("--webhook", "webhook_url", default=None, metavar="URL",
              help="POST a signed JSON summary here when the batch finishes [default: the "
              "project's URL, see `genfarm webhook`].")
@settings_options
@friendly_errors
def submit(settings: Settings, manifest: str, project: str, fmt: str | None, wait: bool,
           as_json: bool, force: bool, dry_run: bool, n_workers: int | None,
           max_bytes: int, name: str, labels: tuple[str, ...], webhook_url: str | None) -> None:
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
    from jobs.labels import BatchMeta, parse_labels
    from jobs.manifest import format_for
    from workers.app import make_submitter

    meta = BatchMeta(name, parse_labels(labels), webhook_url).checked()
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
                                       source=source, force=force, meta=meta)
    sessions = submitter.sessions
    if meta.webhook_url:
        _first_secret(sessions, project)
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
        summary = wait_for_batch(sessions, result.batch_id, every_s=settings.progress_seconds)
        if as_json:
            click.echo(json.dumps(summary))
        sys.exit(0 if summary["status"] == "succeeded" else 1)


def _first_secret(sessions: Any, project: str) -> None:
    """A batch that names a webhook URL in a project with no secret yet: make it, show it once
    (its deliveries are signed with it)."""
    from sqlalchemy.exc import IntegrityError

    from jobs.webhooks import configure, get_config

    try:
        with sessions.begin() as session:
            if get_config(session, project).has_secret:
                return
            made = configure(session, project)
    except IntegrityError:  # another submission made it at the same moment: it showed it
        return
    click.echo(f"webhook secret of project {project} (shown this once; receivers check "
               f"X-Genfarm-Signature with it): {made.secret}", err=True)


def wait_for_batch(sessions: Any, batch_id: str, poll_s: float = 0.5,
                   every_s: float = 10.0) -> dict[str, Any]:
    """Progress until the batch is finalized; returns its summary. On a terminal, a bar; piped
    or in CI (no carriage returns to flood a log), a plain line when the counts change, at most
    every ``every_s`` seconds (GENFARM_PROGRESS_SECONDS), and one at the end."""
    from jobs.batches import resolve_batch, summarize

    with sessions() as session:
        total = resolve_batch(session, batch_id).job_count
    show = _Bar(total) if sys.stderr.isatty() else _Lines(batch_id, every_s)
    try:
        while True:
            with sessions() as session:
                batch = resolve_batch(session, batch_id)
                summary = summarize(session, batch)
            finished = batch.finished_at is not None
            show.update(summary, finished)
            if finished:
                break
            time.sleep(poll_s)
    finally:
        show.close()
    return summary.as_dict()


def _counts(summary: Any) -> dict[str, int]:
    return {k: v for k, v in summary.as_dict()["counts"].items() if v}


class _Bar:
    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="job", file=sys.stderr, dynamic_ncols=True)

    def update(self, summary: Any, finished: bool) -> None:
        self.bar.set_postfix(_counts(summary), refresh=False)
        self.bar.update(summary.done - self.bar.n)

    def close(self) -> None:
        self.bar.close()


class _Lines:
    """``batch 3f2a9c81: 120/1000 done (12%), queued 800 running 80, 35 s`` lines."""

    def __init__(self, batch_id: str, every_s: float) -> None:
        self.batch_id, self.every_s = batch_id, every_s
        self.t0 = time.monotonic()
        self.last: tuple[Any, ...] | None = None
        self.last_at = -float("inf")

    def update(self, summary: Any, finished: bool) -> None:
        now = time.monotonic()
        state = (summary.done, tuple(sorted(_counts(summary).items())))
        if not finished and (state == self.last or now - self.last_at < self.every_s):
            return
        self.last, self.last_at = state, now
        counts = " ".join(f"{k} {v}" for k, v in _counts(summary).items())
        end = f", {summary.status}" if finished else ""
        click.echo(f"batch {self.batch_id[:8]}: {summary.done}/{summary.job_count} done "
                   f"({summary.progress:.0%}), {counts}, {now - self.t0:.0f} s{end}", err=True)

    def close(self) -> None:
        pass


# -- status -------------------------------------------------------------------------------
@cli.command()
@click.argument("batch", required=False)
@click.option("--project", "-p", default=None, help="Only this project's batches.")
@click.option("--name", default=None, help="Only batches of this name (see submit --name).")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="Only batches carrying this label; repeat for several (all must match).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True,
              help="How many recent batches to list.")
@click.option("--failed", "show_failed", is_flag=True, help="List failed jobs with their errors.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--wait", is_flag=True, help="Show progress until BATCH has finished (as `submit "
              "--wait` does), then its status; exit 0 if it succeeded, else 1.")
@settings_options
@friendly_errors
def status(settings: Settings, batch: str | None, project: str | None, name: str | None,
           labels: tuple[str, ...], limit: int, show_failed: bool, as_json: bool,
           wait: bool) -> None:
    """Counts per state for BATCH (an id or a prefix of 6+ characters), or the recent batches
    (newest first; filter by --project, --name, --label). Given a job's id, shows that job (as
    `genfarm job` does).

    \b
      genfarm status                              # the 20 newest batches
      genfarm status --label shot=010 --label v=3 # the batches of shot 010, version 3
      genfarm status 3f2a9c                       # one batch, by a prefix of its id
    """
    from sqlalchemy import select

    from cli.jobview import batch_or_job, show_job
    from jobs.batches import summarize
    from jobs.db import make_engine, session_factory
    from jobs.labels import parse_labels
    from jobs.models import Job, utcnow
    from jobs.presence import unserved

    if wait and batch is None:
        raise Refused("--wait needs a BATCH (see 'genfarm status --help')")
    wanted = parse_labels(labels)
    sessions = session_factory(make_engine(settings.resolved_database_url()))
    if batch is None:
        _list_batches(sessions, project, name, wanted, limit, as_json)
        return
    if wait:
        with sessions() as session:
            target = batch_or_job(session, batch, project)
        if not isinstance(target, Job):
            wait_for_batch(sessions, target.id, every_s=settings.progress_seconds)
    with sessions() as session:
        b = batch_or_job(session, batch, project)
        if isinstance(b, Job):
            show_job(session, b, as_json)
            return
        found = summarize(session, b)
        summary = found.as_dict()
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
    now = utcnow()
    named = f"{summary['name']!r}, " if summary["name"] else ""
    click.echo(printable(f"batch     {summary['id']}  ({named}{summary['project']}, "
                         f"{summary['source']})"))
    if summary["labels"]:
        click.echo(printable("labels    " + "  ".join(f"{k}={v}"
                                                   for k, v in summary["labels"].items())))
    click.echo(f"status    {summary['status']}   {summary['done']}/{summary['jobs']} done "
               f"({summary['progress']:.0%}), {summary['device_seconds']:.1f} device-seconds")
    click.echo(f"time      submitted {human_duration(found.age_seconds(now))} ago, "
               + (f"ran {human_duration(found.elapsed_seconds(now))}" if found.started_at
                  else "not started"))
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


def _list_batches(sessions: Any, project: str | None, name: str | None,
                  labels: dict[str, str], limit: int, as_json: bool) -> None:
    """The newest batches as a table: id, project, name, status, done, age, run time, labels."""
    from jobs.batches import list_batches, summarize
    from jobs.models import utcnow

    with sessions() as session:
        found = [summarize(session, b) for b in list_batches(session, project, limit,
                                                             name=name, labels=labels)]
    if as_json:
        click.echo(json.dumps([f.as_dict() for f in found], indent=2))
        return
    if not found:
        click.echo("no batches" + (" match" if name or labels else " yet"))
        return
    now = utcnow()
    rows = [("BATCH", "PROJECT", "NAME", "STATUS", "DONE", "AGE", "RAN", "LABELS / SOURCE")]
    for f in found:
        tags = " ".join(f"{k}={v}" for k, v in f.labels.items())
        rows.append((f.id[:12], f.project, f.name or "-", f.status, f"{f.done}/{f.job_count}",
                     human_duration(f.age_seconds(now)),
                     human_duration(f.elapsed_seconds(now)) if f.started_at else "-",
                     tags or f.source))
    widths = [min(32, max(len(printable(r[i])) for r in rows)) for i in range(len(rows[0]) - 1)]
    for r in rows:
        cells = [printable(c)[:w].ljust(w) for c, w in zip(r, widths, strict=False)]
        click.echo("  ".join([*cells, printable(r[-1])]).rstrip())


# -- reconcile ----------------------------------------------------------------------------
@cli.command()
@click.option("--loop", is_flag=True, help="Keep running, one pass every reconcile interval.")
@settings_options
@friendly_errors
def reconcile(settings: Settings, loop: bool) -> None:
    """Requeue jobs of lost workers, republish lost messages, finalize finished batches, and
    send the webhook deliveries that are due (for a bounded time: twice the attempt timeout)."""
    from jobs.webhooks import Deliverer
    from workers.app import make_app, publisher
    from workers.reconciler import Reconciler

    rec = Reconciler(settings, publisher(make_app(settings)))
    deliverer = Deliverer.from_settings(settings, rec.sessions)
    while True:
        report = rec.run_once().as_dict()
        report["webhooks"] = deliverer.deliver_due(2 * settings.webhook_timeout_seconds)
        click.echo(json.dumps(report))
        if not loop:
            deliverer.stop()
            return
        time.sleep(settings.reconcile_interval)


from cli import audio as _audio  # noqa: E402
from cli import jobview as _jobview  # noqa: E402
from cli import manage as _manage  # noqa: E402
from cli import models as _models  # noqa: E402
from cli import pull as _pull  # noqa: E402
from cli import serve as _serve  # noqa: E402
from cli import sheet as _sheet  # noqa: E402
from cli import timeline as _timeline  # noqa: E402
from cli import upload as _upload  # noqa: E402
from cli import usage as _usage  # noqa: E402
from cli import webhooks as _webhooks  # noqa: E402
from cli import worker as _worker  # noqa: E402

_worker.register(cli)
_pull.register(cli)
_models.register(cli)
_manage.register(cli)
_usage.register(cli)
_sheet.register(cli)
_jobview.register(cli)
_serve.register(cli)
_upload.register(cli)
_webhooks.register(cli)
_audio.register(cli)
_timeline.register(cli)


def main() -> None:
    cli(prog_name="genfarm")
