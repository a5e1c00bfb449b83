"""Options every command shares, and the error handling that keeps tracebacks from users."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError, ProgrammingError

from jobs.errors import GenfarmError, ManifestError
from jobs.settings import Settings


def settings_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add --data-dir and the three URLs; the command receives ``settings``."""

    @click.option("--data-dir", type=click.Path(path_type=Path), default=None,
                  help="Folder for the embedded database, broker and outputs [GENFARM_DATA_DIR].")
    @click.option("--database-url", default=None, help="SQLAlchemy URL [GENFARM_DATABASE_URL].")
    @click.option("--broker-url", default=None, help="Celery broker URL [GENFARM_BROKER_URL].")
    @click.option("--storage-url", default=None,
                  help="file:///path or s3://bucket/prefix [GENFARM_STORAGE_URL].")
    @functools.wraps(func)
    def wrapper(*args: Any, data_dir: Path | None, database_url: str | None,
                broker_url: str | None, storage_url: str | None, **kwargs: Any) -> Any:
        overrides: dict[str, Any] = {k: v for k, v in {"data_dir": data_dir, "database_url": database_url,
                                        "broker_url": broker_url,
                                        "storage_url": storage_url}.items() if v is not None}
        try:
            settings = Settings(**overrides)
        except ValidationError as exc:
            raise click.UsageError(f"bad setting: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from exc
        return func(*args, settings=settings, **kwargs)

    return wrapper


def friendly_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn genfarm's own errors and unreachable services into one clear line, not a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ManifestError as exc:
            click.echo(exc.report(), err=True)
            click.echo(f"error: {exc}; nothing was submitted", err=True)
            sys.exit(2)
        except GenfarmError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except (OperationalError, ProgrammingError) as exc:
            text = str(exc.orig) if exc.orig is not None else str(exc)
            if "no such table" in text or "does not exist" in text:
                click.echo("error: the database has no genfarm schema yet; run `genfarm db upgrade`",
                           err=True)
            else:
                click.echo(f"error: database unavailable: {text.strip().splitlines()[0]}", err=True)
            sys.exit(1)

    return wrapper
