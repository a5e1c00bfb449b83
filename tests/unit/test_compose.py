"""docker-compose.yml and the Dockerfile, read: every genfarm command exists in the CLI, every
GENFARM_* variable is a known setting, and the production properties we rely on are set. (The
commands and health checks themselves run in tests/e2e/test_compose_stack.py.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from cli.main import cli
from jobs.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def resolve(argv: list[str]) -> tuple[click.Command, list[str]]:
    """The click command an argv names, and the options it passes."""
    assert argv[0] == "genfarm", argv
    command: click.Command = cli
    options = []
    for word in argv[1:]:
        if word.startswith("-"):
            options.append(word.split("=")[0])
        elif isinstance(command, click.Group) and word in command.commands:
            command = command.commands[word]
    return command, options


def genfarm_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if s.get("image") == "genfarm:latest"}


def test_every_command_exists_in_the_cli(compose: dict[str, Any]) -> None:
    services = genfarm_services(compose)
    assert {"migrate", "storage-init", "api", "worker", "worker-cpu", "flower"} <= set(services)
    for name, service in services.items():
        command, options = resolve(service["command"])
        assert not isinstance(command, click.Group), f"{name}: {service['command']} names a group"
        known = {opt for p in command.params for opt in p.opts}
        assert set(options) <= known, (name, set(options) - known)


def test_every_variable_is_a_known_setting(compose: dict[str, Any]) -> None:
    fields = set(Settings.model_fields)
    seen = set()
    for name, service in genfarm_services(compose).items():
        for var in service["environment"]:
            if var.startswith("GENFARM_"):
                seen.add(var)
                assert var[len("GENFARM_"):].lower() in fields, f"{name}: unknown setting {var}"
    assert {"GENFARM_DATABASE_URL", "GENFARM_BROKER_URL", "GENFARM_STORAGE_URL"} <= seen
    env = genfarm_services(compose)["api"]["environment"]
    assert env["GENFARM_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert env["GENFARM_BROKER_URL"].startswith("redis://") and env["GENFARM_STORAGE_URL"].startswith("s3://")


def test_production_properties(compose: dict[str, Any]) -> None:
    services = compose["services"]
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "--maxmemory-policy noeviction" in redis_cmd
    for name in ("redis", "postgres", "s3", "api", "worker", "worker-cpu", "flower"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no health check"
    declared = set(compose["volumes"])
    for name in ("redis", "postgres", "s3"):
        mounts = {v.split(":")[0] for v in services[name]["volumes"]}
        assert mounts <= declared and mounts, name
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert "gpu" in gpu["capabilities"] and services["worker"]["profiles"] == ["gpu"]
    assert services["worker-cpu"]["profiles"] == ["cpu"]
    images = [s.get("image", "") for s in services.values()]
    assert not [i for i in images if "minio" in i], "MinIO's community edition is archived"
    for name in ("api", "worker", "worker-cpu"):  # nothing serves before the schema exists
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name


def test_dockerfile_copies_every_package() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for package in ("jobs", "workers", "storage", "migrations", "cli", "api"):
        assert re.search(rf"^COPY {package} {package}$", text, re.M), package
    assert "torch==${TORCH_VERSION}" in text and "USER genfarm" in text
    # a CPU-only variant by build argument, from the CPU wheel index
    assert re.search(r"^ARG VARIANT=", text, re.M)
    assert "cpu) pip install --index-url https://download.pytorch.org/whl/cpu" in text
    # the non-root user can write where genfarm writes: GENFARM_DATA_DIR=/data, owned by it
    assert re.search(r"^ENV .*GENFARM_DATA_DIR=/data", text, re.M)
    assert "chown genfarm:genfarm /data" in text and 'VOLUME ["/data"]' in text


def test_workers_keep_their_data_in_a_volume(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("worker", "worker-cpu"):
        assert "worker-data:/data" in services[name]["volumes"], name
        assert services[name]["environment"]["GENFARM_DATA_DIR"] == "/data"
    assert "worker-data" in compose["volumes"]
    text = (ROOT / "docker-compose.yml").read_text()
    assert "GENFARM_MODELS_FILE: /models/models.toml" in text and "./models:/models:ro" in text
