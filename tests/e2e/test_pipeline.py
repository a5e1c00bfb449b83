"""The whole pipeline with real processes: CLI submit, a worker process, the database, the broker
and storage; on production parts (Redis, PostgreSQL, S3 endpoint) and on the embedded default."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from jobs.db import make_engine, session_factory
from jobs.models import Batch, Job, JobEvent, Output
from storage import open_storage
from storage.provenance import read_png_provenance
from tests.conftest import S3_ENV, Workers, run_cli

JOBS = 200


def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "jobs.jsonl"
    lines = [{"kind": "generate", "seed": {"range": [0, 100]}, "width": 64, "height": 64},
             {"kind": "generate", "seed": 1000, "count": 50, "yaw": [-20, 20], "width": 48,
              "height": 48, "truncation": 0.5}]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def wait_done(url: str, batch_id: str, workers: Workers, timeout: float = 240) -> Batch:
    engine = make_engine(url)
    sessions = session_factory(engine)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with sessions() as s:
                batch = s.get(Batch, batch_id)
                if batch is not None and batch.finished_at is not None:
                    return batch
            for proc in workers.procs:
                assert proc.poll() is None, workers.logs()
            time.sleep(0.5)
    finally:
        engine.dispose()
    raise AssertionError(f"batch not finished in {timeout}s\n{workers.logs()}")


def check_outputs(url: str, batch_id: str, storage_url: str) -> None:
    engine = make_engine(url)
    sessions = session_factory(engine)
    store = open_storage(storage_url)
    with sessions() as s:
        batch = s.get(Batch, batch_id)
        assert batch.status == "succeeded" and batch.job_count == JOBS
        jobs = s.scalars(select(Job).where(Job.batch_id == batch_id)).all()
        assert len(jobs) == JOBS and {j.status for j in jobs} == {"succeeded"}
        assert {j.attempt for j in jobs} == {1}
        outputs = s.scalars(select(Output)).all()
        events = s.scalar(select(func.count()).select_from(JobEvent))
    engine.dispose()
    assert events == 2 * JOBS  # claimed and succeeded, one row each
    assert len(outputs) == JOBS and len({o.job_id for o in outputs}) == JOBS
    by_job = {j.id: j for j in jobs}
    keys = set(store.list(store.batch_prefix(batch.project, batch_id)))
    manifest_key = store.batch_prefix(batch.project, batch_id) + "manifest.jsonl"
    assert keys == {o.key for o in outputs} | {manifest_key}  # one object per job, no orphans
    for out in outputs:
        job = by_job[out.job_id]
        data = store.get(out.key)
        assert hashlib.sha256(data).hexdigest() == out.sha256 and len(data) == out.bytes
        assert out.key == store.job_key(batch.project, batch_id, job.id, "image.png")
        prov = read_png_provenance(data)
        assert prov["params"] == job.params and prov["job_id"] == job.id
        assert prov["model"] == "aether" and len(prov["weights_sha256"]) == 64
    lines = [json.loads(line) for line in store.get(manifest_key).decode().splitlines()]
    assert len(lines) == JOBS and {line["status"] for line in lines} == {"succeeded"}
    assert {line["outputs"][0]["sha256"] for line in lines} == {o.sha256 for o in outputs}


def submit_and_run(tmp_path: Path, workers: Workers, env: dict[str, str], url: str,
                   storage_url: str) -> str:
    assert run_cli("db", "upgrade", env=env, cwd=tmp_path).returncode == 0
    result = run_cli("submit", str(manifest(tmp_path)), "--project", "studio-a", "--json",
                     env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    batch_id = json.loads(result.stdout)["batch_id"]
    workers.start(env, "--max-batch", "16")
    wait_done(url, batch_id, workers)
    check_outputs(url, batch_id, storage_url)
    pulled = run_cli("pull", batch_id[:8], str(tmp_path / "pulled"), env=env, cwd=tmp_path)
    assert pulled.returncode == 0, pulled.stderr
    assert len(list((tmp_path / "pulled").glob("*/image.png"))) == JOBS
    status = run_cli("status", batch_id, "--json", env=env, cwd=tmp_path)
    assert json.loads(status.stdout)["counts"]["succeeded"] == JOBS
    return batch_id


def test_200_jobs_on_redis_postgresql_and_s3(tmp_path: Path, workers: Workers, pg_url: str,
                                             redis_url: str, s3_bucket: str, s3_endpoint: str) -> None:
    storage_url = f"s3://{s3_bucket}/farm"
    env = {"GENFARM_DATABASE_URL": pg_url, "GENFARM_BROKER_URL": redis_url,
           "GENFARM_STORAGE_URL": storage_url, "GENFARM_MODEL_PROFILE": "tiny",
           "GENFARM_DATA_DIR": str(tmp_path / "data"), "AWS_ENDPOINT_URL": s3_endpoint, **S3_ENV}
    submit_and_run(tmp_path, workers, env, pg_url, storage_url)


def test_200_jobs_on_the_embedded_default(tmp_path: Path, workers: Workers) -> None:
    data = tmp_path / "genfarm-data"
    env = {"GENFARM_MODEL_PROFILE": "tiny", "GENFARM_DATA_DIR": str(data)}
    url = f"sqlite:///{data / 'genfarm.db'}"
    submit_and_run(tmp_path, workers, env, url, (data / "outputs").as_uri())


@pytest.mark.timeout(300)
def test_demo_on_a_fresh_folder(tmp_path: Path) -> None:
    result = run_cli("demo", cwd=tmp_path, env={"GENFARM_MODEL_PROFILE": "tiny"})
    assert result.returncode == 0, result.stdout + result.stderr
    outputs = tmp_path / "genfarm-data" / "outputs" / "demo"
    assert len(list(outputs.glob("*/*/image.png"))) == 20  # 16 generated, 4 re-rendered
    assert len(list(outputs.glob("*/*/video.mp4"))) == 1
    assert "batch succeeded" in result.stdout and "succeeded 21" in result.stdout
