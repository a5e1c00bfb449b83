"""Fixtures for real services: PostgreSQL, Redis, an S3 HTTP endpoint (moto's server, its own
process) and real worker processes. A missing service skips its tests on a laptop and fails in CI."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PG_ADMIN_URL = os.environ.get("GENFARM_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("GENFARM_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
IN_CI = bool(os.environ.get("CI"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for folder in ("unit", "integration", "e2e"):
            if f"{os.sep}{folder}{os.sep}" in str(item.fspath):
                item.add_marker(getattr(pytest.mark, folder))


def missing(service: str, why: object) -> None:
    message = f"{service} is not reachable ({why}); run tests/services.sh"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


# -- PostgreSQL ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def pg_server() -> str:
    from sqlalchemy import create_engine, text

    try:
        engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
    except Exception as exc:  # noqa: BLE001
        missing("PostgreSQL", exc)
    return PG_ADMIN_URL


def create_pg_database(admin_url: str) -> str:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"genfarm_t_{uuid.uuid4().hex[:10]}"
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'create database "{name}"'))
    engine.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_pg_database(admin_url: str, url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'drop database if exists "{make_url(url).database}" with (force)'))
    engine.dispose()


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test."""
    url = create_pg_database(pg_server)
    yield url
    drop_pg_database(pg_server, url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'genfarm.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Runs a test once on SQLite and once on PostgreSQL, with the schema migrated."""
    from jobs.db import upgrade

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'genfarm.db'}"
        upgrade(url)
        yield url
    else:
        server = request.getfixturevalue("pg_server")
        url = create_pg_database(server)
        upgrade(url)
        yield url
        drop_pg_database(server, url)


@pytest.fixture
def runtime(db_url: str, tmp_path: Path) -> Iterator[Any]:
    """A worker process's runtime in the test's own process, on both databases: outputs to a
    local folder, and no wait for jobs of other submissions."""
    from jobs.settings import Settings
    from workers.runner import Runtime

    rt = Runtime(Settings(database_url=db_url, data_dir=tmp_path / "data",
                          storage_url=(tmp_path / "out").as_uri(), batch_wait_seconds=0))
    yield rt
    rt.close()


class PrivatePostgres:
    """A PostgreSQL server of the test's own (initdb in a temp folder), to stop and start."""

    def __init__(self, root: Path) -> None:
        bindirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
        if not bindirs:
            missing("PostgreSQL binaries", "no /usr/lib/postgresql/*/bin")
        self.bin = bindirs[-1]
        self.data = root / "pgdata"
        self.port = free_port()
        self.runas = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        root.mkdir(parents=True, exist_ok=True)
        if self.runas:
            shutil.chown(root, "postgres")
        subprocess.run([*self.runas, str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust",
                        "-U", "postgres"], check=True, capture_output=True)
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        subprocess.run([*self.runas, str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-l",
                        str(self.data / "server.log"), "-o",
                        f"-h 127.0.0.1 -p {self.port} -k {self.data}", "start"],
                       check=True, capture_output=True)

    def stop(self) -> None:
        subprocess.run([*self.runas, str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-m",
                        "fast", "stop"], capture_output=True)


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="genfarm-pg-"))  # outside pytest's 0700 folders
    os.chmod(root, 0o755)
    server = PrivatePostgres(root / "server")
    server.start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


# -- Redis --------------------------------------------------------------------------------
@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database, flushed before and after the test."""
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL)
        client.ping()
    except Exception as exc:  # noqa: BLE001
        missing("Redis", exc)
    client.flushdb()
    yield REDIS_URL
    client.flushdb()
    client.close()


# -- S3 (moto's server in its own process) ------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An S3 HTTP endpoint on loopback: moto's server mode, in its own process."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
    except TimeoutError as exc:
        proc.kill()
        missing("moto server", exc)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket; AWS_* variables point boto3 at the endpoint for this process."""
    import boto3

    for k, v in S3_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    name = f"genfarm-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


# -- real worker processes ----------------------------------------------------------------
class Workers:
    """Starts `genfarm worker` processes and makes sure none outlives the test."""

    def __init__(self, log_dir: Path) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log_dir = log_dir

    def start(self, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
        """A worker of one pool process unless ``args`` choose (``--concurrency auto`` too)."""
        log = open(self.log_dir / f"worker-{len(self.procs)}.log", "wb")  # noqa: SIM115
        pool = [] if {"-c", "--concurrency"} & set(args) else ["--concurrency", "1"]
        proc = subprocess.Popen([str(BIN / "genfarm"), "worker", "-l", "INFO", *pool, *args],
                                env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                                cwd=str(self.log_dir), start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
             timeout: float = 30) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def logs(self, tail: int | None = 4000) -> str:
        return "\n".join(p.read_text(errors="replace")[-tail if tail else 0:]
                         for p in sorted(self.log_dir.glob("worker-*.log")))

    def close(self) -> None:
        for proc in self.procs:
            self.stop(proc, signal.SIGTERM, timeout=20)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    w = Workers(tmp_path)
    yield w
    w.close()


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            input: bytes | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the installed `genfarm` command in its own process."""
    return subprocess.run([str(BIN / "genfarm"), *args], env={**os.environ, **(env or {})},
                          cwd=str(cwd) if cwd else None, capture_output=True, text=True,
                          input=input.decode() if input else None, timeout=timeout)


@pytest.fixture
def genfarm_cli():  # type: ignore[no-untyped-def]
    return run_cli


@pytest.fixture(scope="session", autouse=True)
def _no_stray_data() -> Iterator[None]:
    yield
    shutil.rmtree(ROOT / "tests" / "genfarm-data", ignore_errors=True)
