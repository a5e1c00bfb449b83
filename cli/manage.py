"""`genfarm cancel`, `pause`, `resume` and `retry`: change the course of submitted work."""

from __future__ import annotations

from typing import Any

import click

from cli.io import printable
from cli.options import friendly_errors, settings_options
from jobs.settings import Settings


def _target(settings: Settings, ident: str) -> tuple[Any, Any, list[str], str]:
    """The farm's sessions, and a batch or a single job by id or unique prefix: (sessions, job
    filter, batch ids, label)."""
    from jobs.batches import resolve_target
    from jobs.db import make_engine, session_factory
    from jobs.models import Batch, Job

    sessions = session_factory(make_engine(settings.resolved_database_url()))
    with sessions() as session:
        found = resolve_target(session, ident)
    if isinstance(found, Batch):
        return sessions, Job.batch_id == found.id, [found.id], f"batch {found.id}"
    return sessions, Job.id == found.id, [found.batch_id], f"job {found.id}"


@click.command()
@click.argument("target")
@settings_options
@friendly_errors
def cancel(settings: Settings, target: str) -> None:
    """Cancel a batch or one job (an id or a prefix of 6+ characters).

    Queued jobs never start once this returns; running ones stop at their worker's
    next batch boundary. Finished jobs keep their results.
    """
    from jobs.batches import cancel_jobs
    from storage import open_storage

    sessions, where, batch_ids, label = _target(settings, target)
    storage = open_storage(settings.resolved_storage_url(), endpoint_url=settings.s3_endpoint_url)
    n = cancel_jobs(sessions, storage, where, batch_ids)
    click.echo(printable(f"cancelled {n} job(s) of {label}"))


@click.command()
@click.argument("target")
@settings_options
@friendly_errors
def pause(settings: Settings, target: str) -> None:
    """Pause a batch or one job (an id or a prefix of 6+ characters).

    Its queued jobs are held (status paused): no worker claims them until `genfarm resume`.
    Running jobs finish; finished ones keep their results. Cancel still works on paused jobs.
    """
    from jobs.submit import pause_jobs

    sessions, where, _, label = _target(settings, target)
    n = pause_jobs(sessions, where)
    click.echo(printable(f"paused {n} queued job(s) of {label}"))


@click.command()
@click.argument("target")
@settings_options
@friendly_errors
def resume(settings: Settings, target: str) -> None:
    """Resume a paused batch or job: its paused jobs are queued again, in their old place
    (rank), and published to the workers at once."""
    from jobs.submit import resume_jobs
    from workers.app import make_app, publisher

    sessions, where, _, label = _target(settings, target)
    n = resume_jobs(sessions, publisher(make_app(settings)), where, unit_size=settings.unit_size)
    click.echo(printable(f"resumed {n} paused job(s) of {label}"))


@click.command()
@click.argument("target")
@click.option("--failed", "only_failed", is_flag=True, required=True,
              help="Requeue the failed jobs (required: says what is retried).")
@click.option("--attempts", type=click.IntRange(1, 20), default=None,
              help="More attempts each [default: GENFARM_MAX_ATTEMPTS].")
@settings_options
@friendly_errors
def retry(settings: Settings, target: str, only_failed: bool, attempts: int | None) -> None:
    """Requeue the failed jobs of a batch or one failed job (an id or a prefix of 6+ characters)."""
    from jobs.submit import retry_failed_jobs
    from workers.app import make_app, publisher

    del only_failed
    sessions, where, batch_ids, label = _target(settings, target)
    n = retry_failed_jobs(sessions, publisher(make_app(settings)), where, batch_ids,
                          attempts or settings.max_attempts, unit_size=settings.unit_size,
                          republish_after_s=settings.republish_after_seconds)
    click.echo(printable(f"requeued {n} failed job(s) of {label}"))


def register(group: click.Group) -> None:
    group.add_command(cancel)
    group.add_command(pause)
    group.add_command(resume)
    group.add_command(retry)
