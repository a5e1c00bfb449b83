"""`genfarm submit --dry-run`, `genfarm budget` and `genfarm usage`: what work costs."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click

from cli.io import Refused, human_duration, printable
from cli.options import friendly_errors, settings_options
from jobs.settings import Settings


def print_estimate(settings: Settings, submitter: Any, project: str, specs: list[Any],
                   workers: int | None, as_json: bool, force: bool = False) -> None:
    """The jobs per kind and model of a validated manifest and what they are estimated to
    cost (jobs that would reuse an identical succeeded job's outputs cost nothing); nothing is
    written."""
    from jobs.budgets import committed_seconds
    from jobs.estimates import estimate
    from jobs.models import Budget
    from jobs.presence import served_models
    from jobs.reuse import fingerprints, reusable

    total = len(specs)
    with submitter.sessions() as session:
        if not force and submitter.identity is not None:
            prints = fingerprints(submitter.catalog, submitter.identity,
                                  ((s.kind, s.params) for s in specs))
            hits = reusable(session, project, (p for p in prints if p))
            specs = [s for s, p in zip(specs, prints, strict=True) if not p or p not in hits]
        if workers is None:
            served = served_models(session, 3 * settings.reconcile_interval)
            models = {s.params.get("model", "") for s in specs}
            workers = max(1, len({w for m in models for w in served.get(m, [])}))
        found = estimate(session, submitter.catalog,
                         [(s.kind, s.batch_key, s.params) for s in specs], workers)
        budget = session.get(Budget, project)
        left = (None if budget is None else
                budget.device_seconds - committed_seconds(session, project, budget.set_at))
    reused = total - len(specs)
    report = found.as_dict() | {"dry_run": True, "project": project, "reused": reused,
                                "budget_left": None if left is None else round(left, 3)}
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo("dry run: nothing was written")
    click.echo(f"{'kind':<9} {'model':<16} {'size':<11} {'jobs':>7} {'device-s':>10}  basis")
    for g in found.groups:
        size = g.batch_key.rsplit(":", 1)[-1] if "x" in g.batch_key.rsplit(":", 1)[-1] else ""
        secs = "unknown" if g.device_seconds is None else f"{g.device_seconds:.1f}"
        click.echo(printable(f"{g.kind:<9} {g.model:<16} {size:<11} {g.jobs:>7} {secs:>10}  "
                             f"{g.basis}"))
    if reused:
        click.echo(f"reused    {reused} jobs identical to succeeded ones take their outputs "
                   "(0 device-seconds; --force runs them)")
    click.echo(f"total     {found.jobs} jobs to run, {found.device_seconds:.1f} device-seconds; about "
               f"{human_duration(found.wall_seconds)} on {found.workers} worker(s)")
    if found.unknown:
        click.echo(printable(f"not estimated: {', '.join(found.unknown)} (no run yet)"))
    if left is not None:
        verdict = "fits" if found.device_seconds <= left else "does NOT fit: it would be refused"
        click.echo(f"budget    {max(0.0, left):.1f} device-seconds left; this {verdict}")


@click.group()
def budget() -> None:
    """A project's device-seconds budget: submissions whose estimate exceeds what is left
    are refused (exit 2; the API answers 402)."""


@budget.command("set")
@click.argument("project")
@click.argument("seconds", type=click.FloatRange(0, min_open=False))
@settings_options
@friendly_errors
def budget_set(settings: Settings, project: str, seconds: float) -> None:
    """Give PROJECT a budget of SECONDS device-seconds, counting the jobs submitted from now
    (finished ones at what they took, the rest at their estimate)."""
    _set_budget(settings, project, seconds)
    click.echo(f"project {project}: budget {seconds:.1f} device-seconds from now")


@budget.command("clear")
@click.argument("project")
@settings_options
@friendly_errors
def budget_clear(settings: Settings, project: str) -> None:
    """Remove PROJECT's budget."""
    _set_budget(settings, project, None)
    click.echo(f"project {project}: no budget")


def _set_budget(settings: Settings, project: str, seconds: float | None) -> None:
    from jobs.budgets import set_budget
    from jobs.db import make_engine, session_factory
    from jobs.submit import check_project

    check_project(project)
    sessions = session_factory(make_engine(settings.resolved_database_url()))
    with sessions.begin() as session:
        set_budget(session, project, seconds)


@click.command("usage")
@click.option("--project", "-p", default=None, help="Only this project.")
@click.option("--since", default=None, metavar="DATE",
              help="Only jobs submitted since DATE (ISO 8601: 2026-12-01 or 2026-12-01T18:00).")
@click.option("--name", default=None, help="Only batches of this name.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="Only batches carrying this label; repeat for several (all must match): "
              "what shot 010 cost is `--label shot=010`.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@settings_options
@friendly_errors
def usage_command(settings: Settings, project: str | None, since: str | None,
                  name: str | None, labels: tuple[str, ...], as_json: bool) -> None:
    """Device seconds spent per project, jobs that reused earlier outputs, and budgets."""
    from jobs.budgets import usage
    from jobs.db import make_engine, session_factory
    from jobs.labels import parse_labels

    start = parse_since(since) if since else None
    wanted = parse_labels(labels)
    sessions = session_factory(make_engine(settings.resolved_database_url()))
    with sessions() as session:
        rows = usage(session, project, start, name=name, labels=wanted)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no jobs yet")
    for r in rows:
        line = (f"{r['project']:<16} {r['jobs']:>7} jobs  {r['succeeded']:>7} succeeded  "
                f"{r['reused']:>6} reused  {r['device_seconds']:>10.1f} device-s")
        if r["budget"]:
            b = r["budget"]
            line += f"  budget {b['device_seconds']:.1f}, {b['left']:.1f} left"
        click.echo(printable(line))


def parse_since(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise Refused(f"--since {text!r}: expected an ISO 8601 date, e.g. 2026-12-01 or "
                      "2026-12-01T18:00") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def register(group: click.Group) -> None:
    group.add_command(budget)
    group.add_command(usage_command)
