"""Every command and health check of docker-compose.yml, executed: each genfarm service's command
runs as a process with the file's own environment (variables substituted as Compose does, the
compose host names mapped to loopback, ports moved), against real PostgreSQL, Redis and an S3
endpoint; its health check passes while the service runs, and fails once it is down. Both
profiles (gpu and cpu workers). No container engine is needed."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml
from sqlalchemy.engine import make_url

from tests.conftest import BIN, ROOT, S3_ENV, free_port

SECRETS = {"POSTGRES_PASSWORD": "pg-pass", "S3_ACCESS_KEY": S3_ENV["AWS_ACCESS_KEY_ID"],
           "S3_SECRET_KEY": S3_ENV["AWS_SECRET_ACCESS_KEY"], "GENFARM_FLOWER_PASSWORD": "ops,pa:ss"}
DOT_ENV = {**SECRETS, "GENFARM_MODELS_FILE": "/models/models.toml"}  # what ops put in .env
VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def substitute(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation: ${VAR}, ${VAR:-default}, ${VAR:?error}; $$ is a literal $."""
    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        value = env.get(name, "")
        if op == ":?" and not value:
            raise LookupError(f"{name}: {arg}")
        if op == ":-" and not value:
            return arg
        return value
    return VARIABLE.sub(one, text.replace("$$", "\0")).replace("\0", "$")


class Stack:
    """The compose file's services as local processes: hosts mapped to loopback, ports moved."""

    def __init__(self, tmp: Path, pg_url: str, redis_url: str, s3_endpoint: str) -> None:
        self.tmp, self.pg, self.redis, self.s3 = tmp, make_url(pg_url), redis_url, s3_endpoint
        self.ports: dict[int, int] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def port(self, original: int) -> int:
        if original not in self.ports:
            self.ports[original] = free_port()
        return self.ports[original]

    def map_url(self, value: str) -> str:
        """A compose URL (redis://redis:6379/0, postgresql+psycopg://u:p@postgres:5432/db,
        http://s3:8333) pointed at this test's services."""
        parts = urlsplit(value)
        if parts.hostname == "redis":
            return self.redis
        if parts.hostname == "postgres":
            return self.pg.render_as_string(hide_password=False)
        if parts.hostname == "s3":
            return self.s3
        if parts.hostname in ("127.0.0.1", "0.0.0.0") and parts.port:
            return urlunsplit(parts._replace(netloc=f"{parts.hostname}:{self.port(parts.port)}"))
        return value

    def map_path(self, value: str) -> str:
        """A path under a mount point (/models/models.toml) at that mount's folder here."""
        if value.startswith("/models/"):
            return str(self.tmp / "models" / value[len("/models/"):])
        return value

    def environment(self, service: dict[str, Any]) -> dict[str, str]:
        env = {k: self.map_path(self.map_url(substitute(str(v), DOT_ENV))) for k, v in
               service.get("environment", {}).items()}
        env["GENFARM_DATA_DIR"] = str(self.tmp / "data")  # the image's /data
        env["GENFARM_MODEL_PROFILE"] = "tiny"
        env["GENFARM_DEVICE"] = "cpu"
        env["HOSTNAME"] = socket.gethostname()  # what a container's shell has
        return {**os.environ, **env, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}

    def argv(self, words: list[str]) -> list[str]:
        """A command with its ports moved (--port 8000, 127.0.0.1:8000/, ('127.0.0.1', 5555))."""
        out = []
        for word in words:
            word = re.sub(r"(?<=127\.0\.0\.1:)(\d+)", lambda m: str(self.port(int(m.group(1)))),
                          word)
            word = re.sub(r"(?<=\('127\.0\.0\.1', )(\d+)",
                          lambda m: str(self.port(int(m.group(1)))), word)
            out.append(word)
        for i, word in enumerate(out[:-1]):
            if word == "--port":
                out[i + 1] = str(self.port(int(out[i + 1])))
        return out

    def run(self, name: str, service: dict[str, Any], timeout: float = 120) -> None:
        out = subprocess.run(self.argv(service["command"]), env=self.environment(service),
                             capture_output=True, text=True, timeout=timeout, cwd=self.tmp)
        assert out.returncode == 0, (name, out.stdout[-2000:], out.stderr[-2000:])

    def start(self, name: str, service: dict[str, Any]) -> None:
        log = (self.tmp / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(self.argv(service["command"]),
                                            env=self.environment(service), stdout=log,
                                            stderr=subprocess.STDOUT, cwd=self.tmp,
                                            start_new_session=True)

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def healthy(self, service: dict[str, Any]) -> bool:
        """One run of the service's health check, as Compose runs it in the container."""
        test = service["healthcheck"]["test"]
        kind, rest = test[0], test[1:]
        env = self.environment(service)
        if kind == "CMD-SHELL":
            argv = ["sh", "-c", self.argv([substitute(rest[0], SECRETS)])[0]]
        else:
            assert kind == "CMD", test
            argv = self.argv([substitute(w, SECRETS) for w in rest])
        limit = float(str(service["healthcheck"].get("timeout", "30s")).rstrip("s"))
        try:
            return subprocess.run(argv, env=env, capture_output=True, timeout=limit,
                                  cwd=self.tmp).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def wait_healthy(self, name: str, service: dict[str, Any], within: float = 90) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            proc = self.procs[name]
            assert proc.poll() is None, (name, (self.tmp / f"{name}.log").read_text()[-3000:])
            if self.healthy(service):
                return
            time.sleep(1)
        raise AssertionError(f"{name} never became healthy: {shlex.join(service['healthcheck']['test'])}"
                             f"\n{(self.tmp / f'{name}.log').read_text()[-3000:]}")

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name)


@pytest.fixture
def stack(tmp_path: Path, pg_url: str, redis_url: str, s3_endpoint: str) -> Any:
    s = Stack(tmp_path, pg_url, redis_url, s3_endpoint)
    (tmp_path / "models").mkdir()  # GENFARM_MODELS_DIR, mounted at /models
    (tmp_path / "models" / "models.toml").write_text(
        '[models.aether-small]\nfamily = "aether"\noptions = { profile = "tiny" }\n')
    yield s
    s.close()


def genfarm_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose()["services"].items()
            if str(s.get("image", "")).startswith("genfarm:")}


def test_the_file_needs_its_secrets() -> None:
    """No default passwords: the stack refuses to start until .env sets them."""
    text = (ROOT / "docker-compose.yml").read_text()
    for name in SECRETS:
        with pytest.raises(LookupError, match=name):
            substitute(text, {k: v for k, v in SECRETS.items() if k != name})
    example = (ROOT / ".env.example").read_text()
    for name in SECRETS:
        assert re.search(rf"^{name}=", example, re.M), f".env.example lacks {name}"
    assert substitute(text, SECRETS)  # and with them, it interpolates


def test_every_genfarm_service_runs_and_its_health_check_tells_the_truth(stack: Stack) -> None:
    services = genfarm_services()
    assert set(services) == {"migrate", "storage-init", "api", "worker", "worker-cpu", "flower"}
    one_shot = [n for n, s in services.items() if "healthcheck" not in s]
    assert sorted(one_shot) == ["migrate", "storage-init"]
    for name in ("migrate", "storage-init"):  # depends_on: completed successfully
        stack.run(name, services[name])
    long_running = [n for n in services if n not in one_shot]
    for name in long_running:  # both profiles' workers, the API and Flower
        stack.start(name, services[name])
    for name in long_running:
        stack.wait_healthy(name, services[name])
    for name, service in services.items():  # each sees the studio's models from /models
        listed = subprocess.run([str(BIN / "genfarm"), "models", "--json"],
                                env=stack.environment(service), capture_output=True, text=True,
                                timeout=60)
        assert "aether-small" in listed.stdout, (name, listed.stdout, listed.stderr)
    for name in ("api", "flower"):  # down, and the check says so
        stack.stop(name)
        assert not stack.healthy(services[name]), f"{name}: healthy after it stopped"
    # both workers share this host here (containers each have their own): one down, the
    # other still answers; both down, neither check passes
    stack.stop("worker")
    assert stack.healthy(services["worker-cpu"])
    stack.stop("worker-cpu")
    for name in ("worker", "worker-cpu"):
        assert not stack.healthy(services[name]), f"{name}: healthy after it stopped"


def test_the_worker_check_finds_the_worker_whatever_its_pid(stack: Stack) -> None:
    """The old check named genfarm-1@HOST, true only when the worker is PID 1."""
    worker = genfarm_services()["worker-cpu"]
    stack.start("worker", worker)
    stack.wait_healthy("worker", worker)
    assert stack.procs["worker"].pid != 1
    ping = subprocess.run([str(BIN / "genfarm"), "ping"], env=stack.environment(worker),
                          capture_output=True, text=True, timeout=30)
    assert ping.returncode == 0 and f"genfarm-{stack.procs['worker'].pid}@" in ping.stdout


def test_the_images_first_command_writes_only_under_its_data_folder(tmp_path: Path) -> None:
    """`docker run --rm IMAGE genfarm demo`: the image runs as a user who may write /data
    (GENFARM_DATA_DIR) and nothing else; the demo must need nothing more."""
    workdir, data = tmp_path / "app", tmp_path / "data"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENFARM_")}
    out = subprocess.run([str(BIN / "genfarm"), "demo"], cwd=workdir, capture_output=True,
                         text=True, timeout=300, env={**env, "GENFARM_DATA_DIR": str(data),
                                                      "GENFARM_MODEL_PROFILE": "tiny"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "batch succeeded" in out.stdout
    assert list(workdir.iterdir()) == []  # nothing in the (read-only) working folder
    assert (data / "genfarm.db").exists() and (data / "outputs").is_dir()


def test_the_stores_health_checks_pass_while_they_run_and_fail_when_they_do_not(
        pg_url: str, redis_url: str) -> None:
    """Redis's and PostgreSQL's own checks, run as Compose runs them in their containers (where
    the server is on localhost and the default port), pointed here at this test's servers, then
    at a port where nothing listens."""
    services = compose()["services"]
    redis, pg = urlsplit(redis_url), make_url(pg_url)
    closed = free_port()

    def check(name: str, host: str, port: int) -> bool:
        test = services[name]["healthcheck"]["test"]
        kind, rest = test[0], test[1:]
        argv = ["sh", "-c", rest[0]] if kind == "CMD-SHELL" else list(rest)
        if argv[0] == "redis-cli":  # no environment variable moves redis-cli's default server
            argv[1:1] = ["-h", host, "-p", str(port)]
        env = {**os.environ, "PGHOST": host, "PGPORT": str(port), "PGCONNECT_TIMEOUT": "3"}
        return subprocess.run(argv, env=env, capture_output=True, timeout=10).returncode == 0

    assert check("redis", redis.hostname or "127.0.0.1", redis.port or 6379)
    assert check("postgres", pg.host or "127.0.0.1", pg.port or 5432)
    for name in ("redis", "postgres"):
        assert not check(name, "127.0.0.1", closed), f"{name}: healthy with nothing listening"
