"""`genfarm cancel` and `genfarm retry`: change the course of submitted work."""

from __future__ import annotations

import click

from cli.options import friendly_errors, settings_options
from jobs.errors import NotFound
from jobs.settings import Settings


def _target(session, ident: str):  # type: ignore[no-untyped-def]
    """A batch (id or prefix) or, failing that, a single job id: (filter, batch ids, label)."""
    from jobs.batches import resolve_batch
    from jobs.models import Job

    try:
        batch = resolve_batch(session, ident)
        return Job.batch_id == batch.id, [batch.id], f"batch {batch.id}"
    except NotFound:
        job = session.get(Job, ident)
        if job is None:
            raise NotFound(f"no batch or job {ident!r}") from None
        return Job.id == job.id, [job.batch_id], f"job {job.id}"


@click.command()
@click.argument("target")
@settings_options
@friendly_errors
def cancel(settings: Settings, target: str) -> None:
    """Cancel a batch (id or prefix) or one job.

    Queued jobs never start once this returns; running ones stop at their worker's
    next batch boundary. Finished jobs keep their results.
    """
    from jobs.batches import cancel_jobs
    from jobs.db import make_engine, session_factory
    from storage import open_storage

    sessions = session_factory(make_engine(settings.resolved_database_url()))
    with sessions() as session:
        where, batch_ids, label = _target(session, target)
    storage = open_storage(settings.resolved_storage_url(), endpoint_url=settings.s3_endpoint_url)
    n = cancel_jobs(sessions, storage, where, batch_ids)
    click.echo(f"cancelled {n} job(s) of {label}")


@click.command()
@click.argument("target")
@click.option("--failed", "only_failed", is_flag=True, required=True,
              help="Requeue the failed jobs (required: says what is retried).")
@click.option("--attempts", type=click.IntRange(1, 20), default=None,
              help="More attempts each [default: GENFARM_MAX_ATTEMPTS].")
@settings_options
@friendly_errors
def retry(settings: Settings, target: str, only_failed: bool, attempts: int | None) -> None:
    """Requeue the failed jobs of a batch (id or prefix) or one failed job."""
    from jobs.db import make_engine, session_factory
    from jobs.submit import retry_failed_jobs
    from workers.app import make_app, publisher

    del only_failed
    sessions = session_factory(make_engine(settings.resolved_database_url()))
    with sessions() as session:
        where, batch_ids, label = _target(session, target)
    n = retry_failed_jobs(sessions, publisher(make_app(settings)), where, batch_ids,
                          attempts or settings.max_attempts, unit_size=settings.unit_size,
                          republish_after_s=settings.republish_after_seconds)
    click.echo(f"requeued {n} failed job(s) of {label}")


def register(group: click.Group) -> None:
    group.add_command(cancel)
    group.add_command(retry)
