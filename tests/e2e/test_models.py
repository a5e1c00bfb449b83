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
from typing import Any

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


def api_view(env: dict[str, str], batch_id: str) -> dict[str, Any]:
    """GET /v1/batches/ID from an API on this farm's settings, with a token of the project."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from jobs.settings import Settings
    from jobs.tokens import create_token

    app = create_app(Settings(database_url=env["GENFARM_DATABASE_URL"],
                              broker_url=env["GENFARM_BROKER_URL"],
                              storage_url=env["GENFARM_STORAGE_URL"],
                              data_dir=Path(env["GENFARM_DATA_DIR"]),
                              models_file=Path(env["GENFARM_MODELS_FILE"])))
    with app.state.sessions.begin() as s:
        token = create_token(s, "studio", "tests").token
    answer = TestClient(app).get(f"/v1/batches/{batch_id}",
                                 headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


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


@pytest.fixture(scope="module")
def sd_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Stable Diffusion saved with save_pretrained: a studio's model folder."""
    pytest.importorskip("diffusers")
    from tests.unit.test_diffusers_family import build_tiny_sd

    folder = tmp_path_factory.mktemp("models") / "sd-tiny"
    build_tiny_sd(folder)
    return folder


def png_of(store: Any, out: Any) -> bytes:
    data: bytes = store.get(out.key, sha256=out.sha256)
    return data


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_aether_and_diffusers_jobs_each_run_on_the_worker_that_serves_their_model(
        tmp_path: Path, plugin_path: Path, sd_tiny: Path, redis_url: str, pg_url: str,
        workers: Workers) -> None:
    from jobs.catalog import weights_digest

    models = tmp_path / "models.toml"
    models.write_text(f'[models.sd-tiny]\nfamily = "diffusers"\nweights = "{sd_tiny}"\n'
                      f'sha256 = "{weights_digest(sd_tiny)}"\n')
    env = farm_env(tmp_path, plugin_path, models, redis_url, pg_url)
    assert run_cli("db", "upgrade", env=env).returncode == 0
    listed = {m["name"]: m for m in json.loads(run_cli("models", "--json", env=env).stdout)}
    assert listed["sd-tiny"]["loadable"] and listed["sd-tiny"]["sha256"] == weights_digest(sd_tiny)
    store = open_storage(env["GENFARM_STORAGE_URL"])
    plate = Image.new("RGB", (64, 64), (200, 40, 40))
    buf = io.BytesIO()
    plate.save(buf, format="PNG")
    store.put("studio/in/plate.png", buf.getvalue(), "image/png")
    sd = {"model": "sd-tiny", "steps": 3, "width": 64, "height": 64}
    manifest = tmp_path / "mixed.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in [
        {"kind": "generate", "seed": {"range": [0, 4]}, "width": 32, "height": 32},
        {"kind": "generate", "prompt": ["a red barn", "a blue boat"], "seed": [1, 2], **sd},
        {"kind": "edit", "op": "rerender", "source": {"line": 1}, "yaw": 30},
        {"kind": "edit", "op": "img2img", "prompt": "a red barn at dusk", "seed": 5,
         "strength": 0.7, "source": {"key": "in/plate.png"}, **sd},
    ]) + "\n")
    sub = run_cli("submit", str(manifest), "--project", "studio", "--json", env=env)
    assert sub.returncode == 0, sub.stderr
    batch_id = json.loads(sub.stdout)["batch_id"]
    first = workers.start(env, "--models", "aether")
    db = Db(pg_url)
    try:
        # aether's jobs finish; sd-tiny's wait, and status says no worker serves their model
        db.wait(batch_id, workers, until=lambda d: d.counts(batch_id).get("succeeded") == 8)
        status = run_cli("status", batch_id[:8], env=env)
        assert "5 queued jobs wait for model sd-tiny: no running worker serves it" in status.stdout
        assert api_view(env, batch_id)["unserved_models"] == {"sd-tiny": 5}  # the API says so too
        second = workers.start(env, "--models", "sd-tiny")
        batch = db.wait(batch_id, workers)
        assert batch.status == "succeeded", workers.logs()
        # with both workers running, the same mix again: each job still goes to its model's
        # worker, none to the other (both are idle and free to take anything they consume)
        # (--force: identical jobs would otherwise reuse the first batch's outputs)
        both = run_cli("submit", str(manifest), "--project", "studio", "--json", "--force",
                       env=env)
        assert both.returncode == 0, both.stderr
        both_id = json.loads(both.stdout)["batch_id"]
        assert db.wait(both_id, workers).status == "succeeded", workers.logs()
        for bid in (batch_id, both_id):
            claims = {e.job_id: e.worker for e in db.events(bid) if e.to_status == "running"}
            for job in db.jobs(bid):  # a lease owner is host:worker-pid:process-pid:claim
                worker = first if job.model == "aether" else second
                assert f":{worker.pid}:" in claims[job.id], (job.model, claims[job.id])
        jobs = db.jobs(batch_id)
        assert {j.queue for j in jobs} == {"aether", "sd-tiny"}
        outputs = {o.job_id: o for o in db.outputs(batch_id)}
        for job in jobs:
            prov = read_png_provenance(png_of(store, outputs[job.id]))
            assert prov["model"] == job.model
            if job.model == "sd-tiny":
                assert prov["weights_sha256"] == weights_digest(sd_tiny)
        # same seed, same image, on a rerun in another batch (alone in its pass this time;
        # exact CPU mode, float64, makes the pixels independent of the batch)
        again = tmp_path / "again.jsonl"
        again.write_text(json.dumps({"kind": "generate", "prompt": "a blue boat", "seed": 2, **sd}))
        rerun = json.loads(run_cli("submit", str(again), "--project", "studio", "--json",
                                   env=env).stdout)["batch_id"]
        assert db.wait(rerun, workers).status == "succeeded"
        [fresh] = db.outputs(rerun)
        boat = next(j for j in jobs if j.params.get("prompt") == "a blue boat"
                    and j.params["seed"] == 2)
        def pixels(data: bytes) -> bytes:
            with Image.open(io.BytesIO(data)) as im:
                return im.convert("RGB").tobytes()

        assert pixels(png_of(store, fresh)) == pixels(png_of(store, outputs[boat.id]))
    finally:
        db.close()
