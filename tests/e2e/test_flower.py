"""Flower on the farm's broker: it sees the live worker, the work-unit tasks and queue lengths.
With Chromium installed, a headless screenshot of the dashboard is taken (what ops will see)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx

from jobs.db import upgrade
from tests.conftest import BIN, Workers, free_port, wait_port
from tests.helpers import Db, submit

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_flower_sees_workers_tasks_and_queues(tmp_path: Path, workers: Workers, pg_url: str,
                                              redis_url: str) -> None:
    env = {"GENFARM_DATABASE_URL": pg_url, "GENFARM_BROKER_URL": redis_url,
           "GENFARM_STORAGE_URL": (tmp_path / "out").as_uri(), "GENFARM_MODEL_PROFILE": "tiny",
           "GENFARM_DATA_DIR": str(tmp_path / "data"), "GENFARM_FLOWER_USER": "ops",
           "GENFARM_FLOWER_PASSWORD": "s3cret"}
    upgrade(pg_url)
    port = free_port()
    flower = subprocess.Popen([str(BIN / "genfarm"), "flower", "--port", str(port)],
                              env={**os.environ, **env}, stdout=(tmp_path / "flower.log").open("wb"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_port(port)
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/api/workers", timeout=10).status_code == 401  # auth is on
        http = httpx.Client(base_url=base, auth=("ops", "s3cret"), timeout=30)
        # a backlog first, so that the queue has a length to show
        batch = submit(env, tmp_path, {"kind": "generate", "seed": {"range": [0, 256]},
                                       "width": 64, "height": 64})
        queues = http.get("/api/queues/length").json()
        depth = {q["name"]: q["messages"] for q in queues.get("active_queues", [])}
        workers.start(env, "--max-batch", "8")
        deadline = time.monotonic() + 90
        seen_workers: dict = {}
        while time.monotonic() < deadline:
            seen_workers = http.get("/api/workers", params={"refresh": "true"}).json()
            if any(name.startswith("genfarm-") for name in seen_workers):
                break
            time.sleep(1)
        assert any(name.startswith("genfarm-") for name in seen_workers), seen_workers
        [(name, info)] = [(n, i) for n, i in seen_workers.items() if n.startswith("genfarm-")]
        assert {q["name"] for q in info.get("active_queues", [])} >= {"aether"}  # by model
        if CHROMIUM:
            shot = Path(os.environ.get("GENFARM_ARTIFACTS", tmp_path)) / "flower-dashboard.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                            "--disable-quic", "--no-first-run", "--disable-background-networking",
                            "--disable-component-update", "--disable-sync",
                            f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1400,800",
                            "--virtual-time-budget=4000", f"--screenshot={shot}",
                            f"http://ops:s3cret@127.0.0.1:{port}/"],
                           capture_output=True, timeout=120)
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
        db = Db(pg_url)
        db.wait(batch, workers)
        db.close()
        tasks: dict = {}
        for _ in range(30):  # events arrive asynchronously
            tasks = http.get("/api/tasks", params={"limit": 1000}).json()
            if sum(t["state"] == "SUCCESS" for t in tasks.values()) >= 4:
                break
            time.sleep(1)
        # each unit reads as what it carries (Celery's shadow name), not genfarm.run_unit
        assert not [t for t in tasks.values() if t["name"] == "genfarm.run_unit"]
        units = [t for t in tasks.values() if t["name"] == "generate:aether:64x64 [64 jobs, "
                 f"batch {batch[:8]}]"]
        assert len(units) >= 4 and all(t["worker"] == name for t in units if t.get("worker"))
        assert sum(t["state"] == "SUCCESS" for t in units) >= 4
        assert depth.get("aether", 0) >= 4  # 256 jobs waited as 4 work units, on their model's queue
    finally:
        os.killpg(flower.pid, 15)
        flower.wait(timeout=20)



def test_a_password_with_commas_and_colons_is_one_password(tmp_path: Path, redis_url: str) -> None:
    password = "p,a:ss w,rd:"
    env = {**os.environ, "GENFARM_BROKER_URL": redis_url, "GENFARM_DATA_DIR": str(tmp_path),
           "GENFARM_FLOWER_USER": "ops", "GENFARM_FLOWER_PASSWORD": password}
    port = free_port()
    flower = subprocess.Popen([str(BIN / "genfarm"), "flower", "--port", str(port)], env=env,
                              stdout=(tmp_path / "flower.log").open("wb"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_port(port)
        base = f"http://127.0.0.1:{port}/api/workers"
        assert httpx.get(base, auth=("ops", password), timeout=10).status_code == 200
        for wrong in ("p", "a:ss w", "rd:", "p,a", "ops:" + password):  # no piece of it opens
            assert httpx.get(base, auth=("ops", wrong), timeout=10).status_code == 401, wrong
        cmdline = Path(f"/proc/{flower.pid}/cmdline").read_bytes().decode().split("\0")
        assert password not in " ".join(cmdline)  # not on the command line for all to see
    finally:
        os.killpg(flower.pid, 15)
        flower.wait(timeout=20)
    for blank in ("", "   "):
        out = subprocess.run([str(BIN / "genfarm"), "flower", "--port", str(free_port())],
                             env={**env, "GENFARM_FLOWER_PASSWORD": blank}, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 2 and "GENFARM_FLOWER_PASSWORD" in out.stderr, out.stderr
