"""`genfarm job`: one job's params, state, attempt history, timings and outputs."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from cli.io import printable
from cli.options import friendly_errors, settings_options
from jobs.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from jobs.models import Batch, Job


def batch_or_job(session: Session, ident: str, project: str | None = None) -> Batch | Job:
    """The batch ``ident`` names (an id or a 6+ character prefix), else the job it names: a
    batch's prefix keeps meaning that batch even where some job's id starts the same way."""
    from jobs.batches import resolve_batch, resolve_id
    from jobs.errors import AmbiguousId, NotFound
    from jobs.models import Job

    try:
        return resolve_batch(session, ident, project)
    except AmbiguousId:
        raise  # a prefix of several batches: say so, not "no batch"
    except NotFound:
        pass
    try:
        return resolve_id(session, ident, (Job,), project)
    except AmbiguousId:
        raise
    except NotFound:
        raise NotFound(f"no batch or job {ident!r}") from None


def job_report(session: Session, job: Job) -> dict[str, Any]:
    """Everything recorded about ``job``, as plain JSON values. Queued and run times are the
    spans its events spent in each state (every attempt counted), up to now while unfinished."""
    from sqlalchemy import select

    from jobs.models import Batch, JobEvent, Output, utcnow

    batch = session.get(Batch, job.batch_id)
    events = session.scalars(select(JobEvent).where(JobEvent.job_id == job.id)
                             .order_by(JobEvent.at, JobEvent.id)).all()
    outputs = session.scalars(select(Output).where(Output.job_id == job.id)
                              .order_by(Output.name)).all()
    spent: dict[str, float] = {}
    state, since = "queued", job.created_at  # a submitted job is queued; no event says so
    for event in events:
        spent[state] = spent.get(state, 0.0) + max(0.0, (event.at - since).total_seconds())
        state, since = event.to_status, event.at
    if job.finished_at is None:
        spent[state] = spent.get(state, 0.0) + max(0.0, (utcnow() - since).total_seconds())
    return {
        "id": job.id, "batch_id": job.batch_id, "project": batch.project if batch else None,
        "index": job.index, "kind": job.kind, "model": job.model, "params": job.params,
        "status": job.status, "attempt": job.attempt, "max_attempts": job.max_attempts,
        "progress": job.progress,
        "history": [{"at": e.at.isoformat(), "from": e.from_status, "to": e.to_status,
                     "attempt": e.attempt, "worker": e.worker, "reason": e.reason}
                    for e in events],
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "queued_seconds": round(spent.get("queued", 0.0), 3),
        "run_seconds": round(spent.get("running", 0.0), 3),
        "device_seconds": round(job.device_seconds, 4),
        "error": job.error, "reused_from": job.reused_from,
        "outputs": [{"name": o.name, "key": o.key, "bytes": o.bytes, "sha256": o.sha256,
                     "content_type": o.content_type} for o in outputs],
    }


def print_report(r: dict[str, Any]) -> None:
    """The report as aligned lines (every value passed through ``printable``)."""
    def line(label: str, text: str) -> None:
        click.echo(printable(f"{label:<9} {text}"))

    line("job", f"{r['id']}  (#{r['index']} of batch {r['batch_id']}, project {r['project']})")
    line("kind", f"{r['kind']}   model {r['model'] or '-'}")
    line("params", json.dumps(r["params"], sort_keys=True, separators=(",", ":")))
    line("state", f"{r['status']}   attempt {r['attempt']} of {r['max_attempts']}"
         + (f"   {r['progress']:.0%} done" if r["status"] == "running" and r["progress"] else ""))
    line("created", r["created_at"])
    line("started", r["started_at"] or "-")
    line("finished", r["finished_at"] or "-")
    line("timing", f"queued {r['queued_seconds']:.2f} s, ran {r['run_seconds']:.2f} s, "
         f"{r['device_seconds']:.3f} device-seconds")
    if r["error"]:
        line("error", r["error"])
    if r["reused_from"]:
        line("reused", f"the outputs of job {r['reused_from']} (identical, succeeded)")
    for i, e in enumerate(r["history"]):
        by = f" by {e['worker']}" if e["worker"] else ""
        why = f": {e['reason']}" if e["reason"] else ""
        line("history" if i == 0 else "", f"{e['at']}  {e['from'] or 'new'} -> {e['to']}  "
             f"(attempt {e['attempt']}){by}{why}")
    for i, o in enumerate(r["outputs"]):
        line("outputs" if i == 0 else "", f"{o['key']}  {o['bytes']} bytes  sha256 {o['sha256']}")
    if not r["outputs"]:
        line("outputs", "none")


@click.command("job")
@click.argument("job")
@click.option("--project", "-p", default=None, help="Look only among this project's jobs.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@settings_options
@friendly_errors
def job_command(settings: Settings, job: str, project: str | None, as_json: bool) -> None:
    """One job (an id or a prefix of 6+ characters): params, state, attempt history (when, which
    worker, why), timings, device seconds, error and outputs with their keys and sha256."""
    from jobs.batches import resolve_id
    from jobs.db import make_engine, session_factory
    from jobs.models import Job

    sessions = session_factory(make_engine(settings.resolved_database_url()))
    with sessions() as session:
        found = resolve_id(session, job, (Job,), project)
        assert isinstance(found, Job)
        show_job(session, found, as_json)


def show_job(session: Session, job: Job, as_json: bool) -> None:
    """Print ``job``'s report: what `genfarm job` (and `genfarm status JOB`) shows."""
    report = job_report(session, job)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        print_report(report)


def register(group: click.Group) -> None:
    group.add_command(job_command)
