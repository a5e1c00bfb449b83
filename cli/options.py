"""Options every command shares, and the error handling that keeps tracebacks from users.

A failure the user can cause (a bad setting or URL, a folder that cannot be written, a database
or broker that is down, an unknown revision) ends in one ``error: ...`` line and a non-zero
exit; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import functools
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, ProgrammingError

from cli.io import Failure, Refused, printable
from jobs.errors import BudgetExceeded, GenfarmError, ManifestError
from jobs.labels import InvalidMeta
from jobs.settings import Settings


class GenfarmGroup(click.Group):
    """A click group whose usage errors read like every other failure: one ``error: ...`` line
    (naming the option or argument, with where to find help) instead of a usage block."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise _usage_failure(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _usage_failure(exc) from None


def _usage_failure(exc: click.UsageError) -> Refused:
    hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
    return Refused(exc.format_message().rstrip(".") + hint)


def settings_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add --data-dir and the three URLs; the command receives ``settings``, already checked."""

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
            # a setting's own error names it; one between settings names them in its text
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))} (GENFARM_{'_'.join(map(str, e['loc'])).upper()}): "
                f"{e['msg']}" if e["loc"] else str(e["msg"]).removeprefix("Value error, ")
                for e in exc.errors())
            raise Refused(f"bad setting {problems}") from None
        check_urls(settings)
        return func(*args, settings=settings, **kwargs)

    return wrapper


# -- settings checked before a command runs ---------------------------------------------------
def check_urls(settings: Settings) -> None:
    """Refuse a database or broker URL that can never work (unparseable, unknown driver or
    transport) before the command writes anything. Only what was set is checked: the embedded
    defaults are always well formed. Reaching the server is the command's business."""
    if settings.database_url:  # empty counts as unset, as in Settings.resolved_*
        problem = database_url_problem(settings.database_url)
        if problem:
            raise Refused(f"{problem} [--database-url, GENFARM_DATABASE_URL]")
    if settings.broker_url:
        problem = broker_url_problem(settings.broker_url)
        if problem:
            raise Refused(f"{problem} [--broker-url, GENFARM_BROKER_URL]")


def database_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a database URL (parsed, dialect and driver loaded), or None."""
    from sqlalchemy.engine import make_url

    shown = redact(url)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        detail = "not a SQLAlchemy URL" if isinstance(exc, ArgumentError) else str(exc)
        return (f"database URL {shown!r}: {detail}; expected e.g. "
                "postgresql+psycopg://user:pass@host/db or sqlite:////path/genfarm.db")
    if parsed.host and ("[" in parsed.host or "]" in parsed.host):
        return f"database URL {shown!r}: malformed host {parsed.host!r}"
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        return f"database URL {shown!r}: unknown database or driver {parsed.drivername!r}"
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        return f"database URL {shown!r}: its driver is not installed ({exc})"
    return None


def broker_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a Celery broker URL (no scheme, unknown transport), or None."""
    from kombu.transport import TRANSPORT_ALIASES

    for part in url.split(";"):  # Celery takes failover brokers separated by ';'
        scheme, sep, _ = part.strip().partition("://")
        if not sep:
            return f"broker URL {redact(url)!r}: expected a URL such as redis://host:6379/0"
        transport = scheme.split("+", 1)[0]  # sqla+postgresql://, redis+socket://
        if transport not in TRANSPORT_ALIASES:
            return (f"broker URL {redact(url)!r}: unknown transport {transport!r} "
                    "(e.g. redis://, rediss://, amqp://, sqla+postgresql://, filesystem://)")
    return None


_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@/\s]*@")


def redact(url: str) -> str:
    """``url`` with any password hidden, parseable or not."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a SQLAlchemy URL: hide what looks like a password
        return _PASSWORD.sub(r"\1***@", url)


# -- failures while a command runs ----------------------------------------------------------
def friendly_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn genfarm's own errors, bad settings, unreachable services and unusable folders into
    one ``error: ...`` line and a non-zero exit, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except click.ClickException:
            raise
        except ManifestError as exc:
            click.echo(printable(exc.report(), multiline=True), err=True)
            raise Refused(f"{exc}; nothing was submitted") from None
        except Exception as exc:  # noqa: BLE001 - classified below; the rest is re-raised
            failure = explain(exc, kwargs.get("settings"))
            if failure is None:
                raise
            raise failure from None

    return wrapper


def explain(exc: Exception, settings: Settings | None) -> Failure | None:
    """The one line (and exit status) for a failure the user can fix, or None for a bug."""
    if isinstance(exc, BudgetExceeded | InvalidMeta):
        return Refused(str(exc))
    if isinstance(exc, GenfarmError):
        return Failure(str(exc))
    if isinstance(exc, (OperationalError, ProgrammingError)):
        return Failure(_database_failure(exc, settings))
    if isinstance(exc, (ArgumentError, NoSuchModuleError)) and settings is not None:
        problem = database_url_problem(settings.resolved_database_url())
        return Refused(problem) if problem else None
    if _is_instance(exc, "alembic.util.exc", "CommandError") or \
            _is_instance(exc, "alembic.script.revision", "RevisionError"):
        return Refused(f"revision: {exc}")
    if _is_instance(exc, "kombu.exceptions", "KombuError") or \
            _is_instance(exc, "redis.exceptions", "ConnectionError"):
        where = f" ({redact(settings.resolved_broker_url())})" if settings is not None else ""
        return Failure(f"broker unavailable{where}: {_first_line(exc)}")
    if _is_instance(exc, "celery.exceptions", "CeleryError"):
        return Failure(f"celery: {_first_line(exc)}")
    if isinstance(exc, BrokenPipeError):
        return None  # output piped into `head`: click ends quietly
    if isinstance(exc, OSError):
        return Failure(_os_failure(exc, settings))
    return None


def _is_instance(exc: Exception, module: str, name: str) -> bool:
    """isinstance against a class of a library the CLI may not have imported: if the module was
    never loaded, nothing it defines can have been raised (and the CLI stays quick to start)."""
    loaded = sys.modules.get(module)
    cls = getattr(loaded, name, None) if loaded is not None else None
    return isinstance(cls, type) and isinstance(exc, cls)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _database_failure(exc: OperationalError | ProgrammingError, settings: Settings | None) -> str:
    text = str(exc.orig) if exc.orig is not None else str(exc)
    if "no such table" in text or ("relation" in text and "does not exist" in text):
        return "the database has no genfarm schema yet; run `genfarm db upgrade`"
    where = f" ({redact(settings.resolved_database_url())})" if settings is not None else ""
    message = f"database unavailable{where}: {_first_line(Exception(text))}"
    if settings is not None and not settings.database_url and "unable to open" in text:
        message += f" (in the data folder {settings.data_dir}: set --data-dir or GENFARM_DATA_DIR)"
    return message


def _os_failure(exc: OSError, settings: Settings | None) -> str:
    if exc.filename is None:
        return exc.strerror or _first_line(exc)
    path = Path(str(exc.filename))
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        what = "a file is in the way of a folder"
    else:
        what = exc.strerror or _first_line(exc)
    message = f"{path}: {what}"
    if settings is not None and _within(path, settings.data_dir):
        message += " (the data folder: set --data-dir or GENFARM_DATA_DIR to a folder you can write)"
    return message


def _within(path: Path, folder: Path) -> bool:
    folder = folder.absolute()
    path = path.absolute()
    return path == folder or folder in path.parents or path in folder.parents
