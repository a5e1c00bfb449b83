"""Through HTTP end to end: a real API server process, a worker, Redis, PostgreSQL and the S3
endpoint. Create a token, submit, poll to done, download every output by its presigned URL."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import httpx
from sqlalchemy import select

from jobs.db import make_engine, session_factory, upgrade
from jobs.models import Job
from tests.conftest import BIN, S3_ENV, Workers, free_port, run_cli, wait_port


def test_submit_poll_and_download_over_http(tmp_path: Path, workers: Workers, pg_url: str,
                                            redis_url: str, s3_bucket: str, s3_endpoint: str) -> None:
    env = {"GENFARM_DATABASE_URL": pg_url, "GENFARM_BROKER_URL": redis_url,
           "GENFARM_STORAGE_URL": f"s3://{s3_bucket}/api", "GENFARM_MODEL_PROFILE": "tiny",
           "GENFARM_DATA_DIR": str(tmp_path / "data"), "AWS_ENDPOINT_URL": s3_endpoint,
           "GENFARM_API_ADMIN_TOKEN": "operators-only", **S3_ENV}
    upgrade(pg_url)
    made = run_cli("token", "create", "--project", "studio-a", env=env)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    other = run_cli("token", "create", "--project", "studio-b", env=env).stdout.strip()
    port = free_port()
    server = subprocess.Popen([str(BIN / "genfarm"), "api", "--port", str(port)],
                              env={**os.environ, **env},
                              stdout=(tmp_path / "api.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_port(port)
        workers.start(env, "--max-batch", "8")
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=base, timeout=30) as http:
            assert http.get("/healthz").json() == {"ok": True}
            assert http.get("/openapi.json").json()["info"]["title"] == "genfarm"
            jobs = [{"kind": "generate", "seed": {"range": [0, 24]}, "width": 64, "height": 64}]
            r = http.post("/v1/batches", json={"jobs": jobs, "source": "http-test"}, headers=headers)
            assert r.status_code == 201, r.text
            batch = r.json()["batch_id"]
            assert http.get(f"/v1/batches/{batch}",
                            headers={"Authorization": f"Bearer {other}"}).status_code == 404
            deadline = time.monotonic() + 180
            while True:
                view = http.get(f"/v1/batches/{batch}", headers=headers).json()
                if view["finished_at"]:
                    break
                assert time.monotonic() < deadline, (view, workers.logs())
                time.sleep(0.5)
            assert view["status"] == "succeeded" and view["progress"] == 1.0
            assert view["counts"]["succeeded"] == 24 and view["device_seconds"] > 0
            engine = make_engine(pg_url)
            with session_factory(engine)() as s:
                job_ids = list(s.scalars(select(Job.id).where(Job.batch_id == batch)))
            engine.dispose()
            for job_id in job_ids:
                job = http.get(f"/v1/jobs/{job_id}", headers=headers).json()
                assert job["status"] == "succeeded" and job["attempt"] == 1
                [out] = job["outputs"]
                assert out["url"].startswith(s3_endpoint)  # presigned, straight from the store
                data = httpx.get(out["url"], timeout=30).content  # no API token needed
                assert hashlib.sha256(data).hexdigest() == out["sha256"] and len(data) == out["bytes"]
            assert http.get("/metrics", headers=headers).status_code == 403  # a project's token
            metrics = http.get("/metrics", headers={"Authorization": "Bearer operators-only"}).text
            assert 'genfarm_jobs{kind="generate",state="succeeded"} 24.0' in metrics
    finally:
        server.terminate()
        server.wait(timeout=20)
