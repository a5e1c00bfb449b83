"""`genfarm webhook`: a project's webhook URL and secret, and what was delivered for a batch."""

from __future__ import annotations

import json
from typing import Any

import click

from cli.io import Refused, printable
from cli.options import friendly_errors, settings_options
from jobs.settings import Settings


@click.group("webhook")
def webhook() -> None:
    """Notify a URL when a batch finishes: an HTTP POST of a signed JSON summary.

    \b
    A batch notifies the URL it names (`genfarm submit --webhook URL`), else its
    project's default URL (`genfarm webhook set --url`), else nobody. Every POST is
    signed with the project's secret, made by `set` and shown only then:
      X-Genfarm-Signature: t=<unix seconds>,v1=<hex>
    where <hex> is HMAC-SHA256, keyed with the secret, of "<t>." followed by the raw
    request body. A receiver recomputes it over the bytes it got (before parsing
    them), compares in constant time and refuses a t more than 5 minutes off:
      python: from jobs.webhooks import verify   (or copy it: docs/webhooks.md)
    \b
    The body is {"event": "batch.finished", "delivery_id": ..., "batch": {id, project,
    name, labels, status, jobs, counts, device_seconds, created_at, finished_at,
    manifest_key, ...}}. Any 2xx answer is a delivery; anything else, an error or no
    answer within GENFARM_WEBHOOK_TIMEOUT_SECONDS (5 s) is retried after 10 s, 30 s,
    90 s ... (at most GENFARM_WEBHOOK_BACKOFF_MAX_SECONDS apart), up to
    GENFARM_WEBHOOK_MAX_ATTEMPTS (8) attempts. Retries resend the same X-Genfarm-Delivery
    id: receivers dedupe on it. Redirects are not followed.
    """


@webhook.command("set")
@click.option("--project", "-p", required=True, help="The project.")
@click.option("--url", default=None, metavar="URL",
              help="Default URL for the project's batches (http or https).")
@click.option("--no-url", is_flag=True, help="Remove the default URL (batches that name their "
              "own still notify it).")
@click.option("--rotate-secret", is_flag=True,
              help="Make a new secret (shown once); the old one stops working at once.")
@settings_options
@friendly_errors
def webhook_set(settings: Settings, project: str, url: str | None, no_url: bool,
                rotate_secret: bool) -> None:
    """Set PROJECT's default webhook URL and make its secret (the first time, or with
    --rotate-secret): the secret is printed this once, keep it with your receiver."""
    from jobs.submit import check_project
    from jobs.webhooks import KEEP, configure

    if url is not None and no_url:
        raise Refused("--url and --no-url: give one of them")
    check_project(project)
    with _sessions(settings).begin() as session:
        given = None if no_url else (KEEP if url is None else url)
        config = configure(session, project, url=given, rotate=rotate_secret)
    click.echo(printable(f"project {project}: default URL {config.url or 'none'}"))
    if config.secret:
        click.echo(f"secret  {config.secret}")
        click.echo("(shown once, now: receivers verify X-Genfarm-Signature with it; "
                   "--rotate-secret makes a new one)", err=True)
    else:
        click.echo("secret  unchanged (not shown again; --rotate-secret makes a new one)")


@webhook.command("show")
@click.option("--project", "-p", required=True, help="The project.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@settings_options
@friendly_errors
def webhook_show(settings: Settings, project: str, as_json: bool) -> None:
    """PROJECT's default URL and whether it has a secret (never the secret itself)."""
    from jobs.submit import check_project
    from jobs.webhooks import get_config

    check_project(project)
    with _sessions(settings)() as session:
        config = get_config(session, project)
    if as_json:
        click.echo(json.dumps({"project": project, "url": config.url,
                               "has_secret": config.has_secret,
                               "updated_at": _iso(config.updated_at)}, indent=2))
        return
    click.echo(printable(f"project {project}"))
    click.echo(printable(f"url     {config.url or 'none (batches notify only a URL they name)'}"))
    click.echo("secret  " + ("set (not shown; --rotate-secret makes a new one)"
                             if config.has_secret else "none (`genfarm webhook set` makes one)"))


@webhook.command("clear")
@click.option("--project", "-p", required=True, help="The project.")
@settings_options
@friendly_errors
def webhook_clear(settings: Settings, project: str) -> None:
    """Remove PROJECT's default URL and secret. A batch that names its own URL still
    notifies it, signed with a new secret (`set --rotate-secret` shows one)."""
    from jobs.submit import check_project
    from jobs.webhooks import clear

    check_project(project)
    with _sessions(settings).begin() as session:
        removed = clear(session, project)
    click.echo(f"project {project}: " + ("webhook URL and secret removed" if removed
                                          else "had no webhook settings"))


@webhook.command("deliveries")
@click.argument("batch")
@click.option("--project", "-p", default=None, help="Only a batch of this project.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@settings_options
@friendly_errors
def webhook_deliveries(settings: Settings, batch: str, project: str | None,
                       as_json: bool) -> None:
    """BATCH's webhook deliveries (an id or a prefix of 6+ characters), each with its
    attempts: when, the receiver's status code or the error, how long it took."""
    from jobs.batches import resolve_batch
    from jobs.webhooks import deliveries_of

    with _sessions(settings)() as session:
        found = deliveries_of(session, resolve_batch(session, batch, project).id)
    rows = [delivery_dict(d, attempts) for d, attempts in found]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no deliveries (the batch has not finished, or names no URL and its project "
                   "has no default)")
    for r in rows:
        click.echo(printable(f"delivery {r['id']}  {r['status']:<9}  {r['event']}  {r['url']}"))
        for a in r["attempts"]:
            outcome = f"HTTP {a['status_code']}" if a["status_code"] is not None else a["error"]
            click.echo(printable(f"  {a['at']}  {outcome}  ({a['seconds']:.3f} s)"))
        if r["status"] == "pending":
            click.echo(f"  next attempt at {r['next_attempt_at']}")


def delivery_dict(d: Any, attempts: list[Any]) -> dict[str, Any]:
    return {"id": d.id, "batch_id": d.batch_id, "event": d.event, "url": d.url,
            "status": d.status, "attempts": [
                {"at": _iso(a.at), "status_code": a.status_code, "error": a.error,
                 "seconds": a.seconds} for a in attempts],
            "next_attempt_at": _iso(d.next_attempt_at) if d.status == "pending" else None,
            "last_error": d.last_error, "created_at": _iso(d.created_at),
            "delivered_at": _iso(d.delivered_at)}


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _sessions(settings: Settings) -> Any:
    from jobs.db import make_engine, session_factory

    return session_factory(make_engine(settings.resolved_database_url()))


def register(group: click.Group) -> None:
    group.add_command(webhook)
