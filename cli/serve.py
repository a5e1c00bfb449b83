"""`genfarm api`, `genfarm token` and `genfarm flower`: the services around the farm."""

from __future__ import annotations

import click

from cli.options import friendly_errors, settings_options
from jobs.settings import Settings


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Server processes.")
@settings_options
@friendly_errors
def api(settings: Settings, host: str, port: int, workers: int) -> None:
    """Serve the HTTP API (OpenAPI document at /openapi.json, docs at /docs)."""
    import uvicorn

    from api.app import create_app

    if workers > 1:
        click.echo("one process per `genfarm api`; run several behind a proxy to scale", err=True)
    # uvicorn would believe X-Forwarded-* from 127.0.0.1 by default; the app believes them only
    # from GENFARM_API_TRUSTED_PROXIES (whatever server runs it), so uvicorn's are off
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info",
                proxy_headers=False, server_header=False)


@click.group()
def token() -> None:
    """API tokens: one per client, each sees only its project."""


@token.command("create")
@click.option("--project", "-p", required=True)
@click.option("--name", default="", help="A label, e.g. the tool that will use it.")
@settings_options
@friendly_errors
def token_create(settings: Settings, project: str, name: str) -> None:
    """Create a token; it is printed once and stored only as a hash."""
    from jobs.db import make_engine, session_factory
    from jobs.tokens import create_token

    sessions = session_factory(make_engine(settings.resolved_database_url()))
    with sessions.begin() as session:
        new = create_token(session, project, name)
    click.echo(new.token)
    click.echo(f"token {new.id} for project {new.project}: store it now, it is not shown again",
               err=True)


@token.command("revoke")
@click.argument("token_id")
@settings_options
@friendly_errors
def token_revoke(settings: Settings, token_id: str) -> None:
    """Revoke a token by its id (printed when it was created)."""
    from jobs.db import make_engine, session_factory
    from jobs.errors import NotFound
    from jobs.tokens import revoke

    sessions = session_factory(make_engine(settings.resolved_database_url()))
    with sessions.begin() as session:
        if not revoke(session, token_id):
            raise NotFound(f"no active token {token_id!r}")
    click.echo(f"revoked {token_id}")


@click.command()
@click.option("--address", default="127.0.0.1", show_default=True)
@click.option("--port", default=5555, show_default=True, type=click.IntRange(1, 65535))
@settings_options
@friendly_errors
def flower(settings: Settings, address: str, port: int) -> None:
    """Start Flower on the farm's broker, with basic auth (GENFARM_FLOWER_USER/_PASSWORD).

    Workers send task events; queue lengths show on Redis and RabbitMQ brokers.
    """
    from flower.options import options as flower_options

    from workers.app import make_app

    user, password = settings.flower_user, settings.flower_password or ""
    if not password.strip():
        raise click.UsageError("set GENFARM_FLOWER_PASSWORD (not blank): Flower is never served "
                               "without auth")
    if not user.strip() or ":" in user:
        raise click.UsageError("GENFARM_FLOWER_USER must be a non-blank name without ':'")
    # Set as one credential, never through --basic-auth: Flower splits that option at commas
    # (a password "a,b" would become two), and a command line shows in `ps` to every user.
    flower_options.basic_auth = [f"{user}:{password}"]
    app = make_app(settings)
    app.start(["flower", f"--address={address}", f"--port={port}", "--purge_offline_workers=60"])


@click.group()
def storage() -> None:
    """Object storage."""


@storage.command("init")
@settings_options
@friendly_errors
def storage_init(settings: Settings) -> None:
    """Check the storage is reachable, creating the S3 bucket (or folder) if it is missing."""
    from storage import open_storage

    store = open_storage(settings.resolved_storage_url(), endpoint_url=settings.s3_endpoint_url)
    created = store.create_bucket() if hasattr(store, "create_bucket") else False
    store.check()
    click.echo(f"storage {store.url} is ready" + (" (bucket created)" if created else ""))


def register(group: click.Group) -> None:
    group.add_command(storage)
    group.add_command(api)
    group.add_command(token)
    group.add_command(flower)
