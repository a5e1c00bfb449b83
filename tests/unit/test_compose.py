"""docker-compose.yml and the Dockerfile, read: every genfarm command exists in the CLI, every
GENFARM_* variable is a known setting, and the production properties we rely on are set. (The
commands and health checks themselves run in tests/e2e/test_compose_stack.py.)"""

from __future__ import annotations

import re
import subprocess
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
    return {n: s for n, s in compose["services"].items()
            if str(s.get("image", "")).startswith("genfarm:")}


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
    # every GPU of the host, a pool process on each
    assert gpu["count"] == "all" and "auto" in services["worker"]["command"]
    assert services["worker-cpu"]["profiles"] == ["cpu"]
    images = [s.get("image", "") for s in services.values()]
    assert not [i for i in images if "minio" in i], "MinIO's community edition is archived"
    for name in ("api", "worker", "worker-cpu"):  # nothing serves before the schema exists
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
    for name, service in genfarm_services(compose).items():  # webhooks reach no stack host
        private = service["environment"]["GENFARM_WEBHOOK_ALLOW_PRIVATE"]
        assert private == "${GENFARM_WEBHOOK_ALLOW_PRIVATE:-false}", name


def test_dockerfile_copies_every_package() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for package in ("jobs", "workers", "storage", "migrations", "cli", "api"):
        assert re.search(rf"^COPY {package} {package}$", text, re.M), package
    assert "torch==${TORCH_VERSION}" in text and "USER genfarm" in text
    # a CPU-only variant by build argument, from the CPU wheel index
    assert re.search(r"^ARG VARIANT=", text, re.M)
    assert services_image_args()["worker-cpu"] == ("genfarm:cpu", {"VARIANT": "cpu"})
    # the non-root user can write where genfarm writes: GENFARM_DATA_DIR=/data, owned by it
    assert re.search(r"^ENV .*GENFARM_DATA_DIR=/data", text, re.M)
    assert "chown genfarm:genfarm /data" in text and 'VOLUME ["/data"]' in text


def services_image_args() -> dict[str, tuple[str, dict[str, str]]]:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    return {n: (s["image"], (s["build"].get("args", {}) if isinstance(s["build"], dict) else {}))
            for n, s in services.items() if "build" in s}


def torch_install(tmp_path: Path, **args: str) -> tuple[int, str]:
    """Run the Dockerfile's torch step as the build would (its ARG defaults, then ``args``),
    with a stand-in pip that prints what it was asked for."""
    text = (ROOT / "Dockerfile").read_text()
    defaults = dict(re.findall(r"^ARG (\w+)=(.*)$", text, re.M))
    step = re.search(r"^RUN (case .*?esac)$", text, re.M | re.S)
    assert step, "the Dockerfile's torch step (RUN case ... esac) is gone"
    (tmp_path / "pip").write_text('#!/bin/sh\necho "pip $*"\n')
    (tmp_path / "pip").chmod(0o755)
    env = {**defaults, **args, "PATH": f"{tmp_path}:/usr/bin:/bin"}
    out = subprocess.run(["sh", "-c", step.group(1).replace("\\\n", "\n")], env=env,
                         capture_output=True, text=True)
    return out.returncode, (out.stdout + out.stderr).strip()


def test_the_torch_step_installs_the_variant_asked_for(tmp_path: Path) -> None:
    assert torch_install(tmp_path) == (0, "pip install torch==2.13.0")  # CUDA: pip's index
    assert torch_install(tmp_path, VARIANT="cpu") == (
        0, "pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0")
    # a mirror of the CPU wheels, or (empty) the index pip is configured with
    assert torch_install(tmp_path, VARIANT="cpu", TORCH_INDEX_URL="https://m.example/cpu") == (
        0, "pip install --index-url https://m.example/cpu torch==2.13.0")
    assert torch_install(tmp_path, VARIANT="cpu", TORCH_INDEX_URL="") == (
        0, "pip install torch==2.13.0")
    code, said = torch_install(tmp_path, VARIANT="rocm")
    assert code != 0 and "VARIANT must be cpu or cuda" in said


def test_workers_keep_their_data_in_a_volume(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("worker", "worker-cpu"):
        assert "worker-data:/data" in services[name]["volumes"], name
        assert services[name]["environment"]["GENFARM_DATA_DIR"] == "/data"
    assert "worker-data" in compose["volumes"]



def test_every_genfarm_service_sees_the_same_models(compose: dict[str, Any]) -> None:
    """The API validates jobs against the models file the workers load: every genfarm service
    mounts the models folder and reads GENFARM_MODELS_FILE from .env (blank: built-ins only)."""
    for name, service in genfarm_services(compose).items():
        assert "${GENFARM_MODELS_DIR:-./models}:/models:ro" in service["volumes"], name
        assert service["environment"]["GENFARM_MODELS_FILE"] == "${GENFARM_MODELS_FILE:-}", name
    assert Settings(models_file="").models_file is None  # blank means unset
    assert Settings(models_file=" ", _env_file=None).models_file is None
    example = (ROOT / ".env.example").read_text()
    assert re.search(r"^GENFARM_MODELS_FILE=", example, re.M)
    assert re.search(r"^GENFARM_MODELS_DIR=", example, re.M)
