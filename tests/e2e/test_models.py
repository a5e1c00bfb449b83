"""Bring your own model, through real processes: the example plugin installed as a studio would
install it, its jobs run by a real worker; a manifest mixing models on two workers, each started
with --models, every job run by the worker that serves its model; jobs for a model nobody
serves wait, and `genfarm status` says so."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from storage import open_storage
from storage.provenance import read_png_provenance
from tests.conftest import ROOT, Workers, run_cli
from tests.helpers import Db

EXAMPLE = ROOT / "examples" / "genfarm-plugin-example"


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin, pip-installed into a folder of its own (its dist-info carries the
    entry point), with no change to genfarm."""
    target = tmp_path_factory.mktemp("plugin")
    build = tmp_path_factory.mktemp("plugin-src")
    src = build / "src"
    subprocess.run(["cp", "-r", str(EXAMPLE), str(src)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(target), str(src)],
                   check=True, capture_output=True)
    assert list(target.glob("genfarm_cppn-*.dist-info"))
    return target


def farm_env(tmp_path: Path, plugin: Path, models_file: Path, redis_url: str, pg_url: str
             ) -> dict[str, str]:
    return {"GENFARM_DATABASE_URL": pg_url, "GENFARM_BROKER_URL": redis_url,
            "GENFARM_STORAGE_URL": (tmp_path / "out").as_uri(),
            "GENFARM_DATA_DIR": str(tmp_path / "data"), "GENFARM_MODELS_FILE": str(models_file),
            "GENFARM_MODEL_PROFILE": "tiny", "GENFARM_RECONCILE_INTERVAL": "1",
            "PYTHONPATH": os.pathsep.join([str(plugin), str(ROOT)])}


def test_the_example_plugin_runs_through_a_real_worker(
        tmp_path: Path, plugin_path: Path, redis_url: str, pg_url: str, workers: Workers) -> None:
    env = farm_env(tmp_path, plugin_path, EXAMPLE / "models.toml", redis_url, pg_url)
    assert run_cli("db", "upgrade", env=env).returncode == 0
    listed = run_cli("models", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    cppn = next(m for m in json.loads(listed.stdout) if m["name"] == "cppn")
    assert cppn["family"] == "cppn" and cppn["loadable"] and cppn["queues"] == ["cppn"]
    kinds = run_cli("kinds", env=env)
    assert "on cppn (cppn)" in kinds.stdout and "zoom" in kinds.stdout
    sub = run_cli("submit", str(EXAMPLE / "example.jsonl"), "--project", "studio", "--json",
                  env=env)
    assert sub.returncode == 0, sub.stderr
    batch_id = json.loads(sub.stdout)["batch_id"]
    workers.start(env, "--models", "cppn", "--concurrency", "1")
    db = Db(pg_url)
    try:
        batch = db.wait(batch_id, workers)
        assert batch.status == "succeeded", workers.logs()
        outputs = db.outputs(batch_id)
        assert len(outputs) == 11
        store = open_storage(env["GENFARM_STORAGE_URL"])
        images = {}
        for out in outputs:
            data = store.get(out.key, sha256=out.sha256)
            prov = read_png_provenance(data)
            assert prov["model"] == "cppn" and prov["family"] == "cppn"
            p = prov["params"]
            images[(p["seed"], p["zoom"], p["width"])] = data
            with Image.open(io.BytesIO(data)) as im:
                assert im.size == (prov["params"]["width"], prov["params"]["height"])
        assert len(set(images.values())) == 11  # every seed and zoom its own picture
    finally:
        db.close()


def test_each_job_runs_on_a_worker_that_serves_its_model(
        tmp_path: Path, plugin_path: Path, redis_url: str, pg_url: str, workers: Workers) -> None:
    models = tmp_path / "models.toml"
    models.write_text((EXAMPLE / "models.toml").read_text())
    env = farm_env(tmp_path, plugin_path, models, redis_url, pg_url)
    assert run_cli("db", "upgrade", env=env).returncode == 0
    manifest = tmp_path / "mixed.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in [
        {"kind": "generate", "seed": {"range": [0, 6]}, "width": 32, "height": 32},
        {"kind": "generate", "model": "cppn", "seed": {"range": [0, 6]}, "width": 32,
         "height": 32},
        {"kind": "edit", "op": "rerender", "source": {"line": 1}, "yaw": 30},
    ]) + "\n")
    sub = run_cli("submit", str(manifest), "--project", "studio", "--json", env=env)
    assert sub.returncode == 0, sub.stderr
    batch_id = json.loads(sub.stdout)["batch_id"]
    first = workers.start(env, "--models", "aether")
    db = Db(pg_url)
    try:
        # aether's jobs finish; cppn's wait, and status says no worker serves their model
        db.wait(batch_id, workers, until=lambda d: d.counts(batch_id).get("succeeded") == 12)
        status = run_cli("status", batch_id[:8], env=env)
        assert "6 queued jobs wait for model cppn: no running worker serves it" in status.stdout
        workers.start(env, "--models", "cppn")
        batch = db.wait(batch_id, workers)
        assert batch.status == "succeeded", workers.logs()
        claims = {e.job_id: e.worker for e in db.events(batch_id) if e.to_status == "running"}
        for job in db.jobs(batch_id):  # a lease owner is host:worker-pid:process-pid:claim
            on_first = f":{first.pid}:" in claims[job.id]
            assert on_first == (job.model == "aether"), (job.model, claims[job.id])
        assert {j.queue for j in db.jobs(batch_id)} == {"aether", "cppn"}
    finally:
        db.close()
