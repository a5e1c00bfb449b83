"""`genfarm job`, `genfarm status JOB` and `genfarm status BATCH --wait`, through the CLI (its own
process) on PostgreSQL, with jobs run by the real in-process runner: one that succeeds, one that
fails its first attempt and succeeds on its second, one that always fails, and one reused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from jobs.db import upgrade
from jobs.models import Batch, Job, Output
from jobs.settings import Settings
from tests.conftest import run_cli
from workers.runner import Runtime

LINES = [{"kind": "noop", "tag": 1}, {"kind": "noop", "tag": 2, "fail": "transient"},
         {"kind": "noop", "tag": 3, "fail": "always"}]


def submit(env: dict[str, str], path: Path, lines: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    sub = run_cli("submit", str(path), "--project", "acme", "--json", env=env)
    assert sub.returncode == 0, sub.stderr
    created = json.loads(sub.stdout)
    assert created["id"] == created["batch_id"]  # the name status --json uses, and the old one
    return str(created["id"])


@pytest.fixture
def farm(tmp_path: Path, pg_url: str) -> dict[str, Any]:
    upgrade(pg_url)
    env = {"GENFARM_DATABASE_URL": pg_url, "GENFARM_DATA_DIR": str(tmp_path / "data"),
           "GENFARM_STORAGE_URL": (tmp_path / "out").as_uri()}
    settings = Settings(database_url=pg_url, data_dir=tmp_path / "data",
                        storage_url=env["GENFARM_STORAGE_URL"])
    batch = submit(env, tmp_path / "a.jsonl", LINES)
    runtime = Runtime(settings)
    try:
        with runtime.sessions() as s:
            ids = list(s.scalars(select(Job.id).where(Job.batch_id == batch).order_by(Job.index)))
        first = runtime.run_unit(ids)
        assert (first.succeeded, first.failed, first.requeued) == (1, 1, 1), first
        with runtime.sessions.begin() as s:  # skip the retry's backoff instead of sleeping it out
            s.execute(update(Job).where(Job.id == ids[1]).values(not_before=None))
        assert runtime.run_unit([ids[1]]).succeeded == 1
    finally:
        runtime.close()
    # identical to line 1, which succeeded: reused at submission, so the batch is done at once
    reused_batch = submit(env, tmp_path / "b.jsonl", LINES[:1])
    with runtime.sessions() as s:
        reused = s.scalars(select(Job).where(Job.batch_id == reused_batch)).one()
        outputs = {o.job_id: o for o in s.scalars(select(Output))}
        statuses = {b.id: b.status for b in s.scalars(select(Batch))}
    assert statuses == {batch: "failed", reused_batch: "succeeded"}
    return {"env": env, "batch": batch, "ids": ids, "reused": reused.id,
            "reused_batch": reused_batch, "outputs": outputs}


def job_cli(farm: dict[str, Any], *args: str) -> Any:
    return run_cli(*args, env=farm["env"])


def test_a_job_shows_its_params_attempts_timings_and_outputs(farm: dict[str, Any]) -> None:
    ok, flaky, poison = farm["ids"]
    r = job_cli(farm, "job", flaky[:8], "--json")
    assert r.returncode == 0, r.stderr
    view = json.loads(r.stdout)
    assert {"id", "batch_id", "project", "index", "kind", "model", "params", "status", "attempt",
            "max_attempts", "history", "created_at", "started_at", "finished_at",
            "queued_seconds", "run_seconds", "device_seconds", "error", "reused_from",
            "outputs"} <= set(view)
    assert view["id"] == flaky and view["batch_id"] == farm["batch"]
    assert (view["project"], view["index"], view["kind"], view["model"]) == ("acme", 1, "noop", "noop")
    assert view["params"]["fail"] == "transient" and view["params"]["tag"] == 2
    assert (view["status"], view["attempt"], view["max_attempts"]) == ("succeeded", 2, 3)
    steps = [(e["from"], e["to"], e["attempt"]) for e in view["history"]]
    assert steps == [("queued", "running", 1), ("running", "queued", 1),
                     ("queued", "running", 2), ("running", "succeeded", 2)]
    assert "transient" in view["history"][1]["reason"]
    assert all(e["worker"] for e in view["history"])
    assert view["finished_at"] and view["started_at"] and view["error"] is None
    assert view["queued_seconds"] >= 0 and view["run_seconds"] >= 0
    out = farm["outputs"][flaky]
    assert view["outputs"] == [{"name": out.name, "key": out.key, "bytes": out.bytes,
                                "sha256": out.sha256, "content_type": out.content_type}]

    text = job_cli(farm, "job", flaky[:6])
    assert text.returncode == 0, text.stderr
    for expected in (flaky, farm["batch"], "attempt 2 of 3", "queued -> running",
                     "running -> queued", "running -> succeeded", "drill: a transient failure",
                     '"fail":"transient"', out.key, out.sha256, f"{out.bytes} bytes",
                     view["history"][0]["worker"]):
        assert expected in text.stdout, (expected, text.stdout)

    failed = json.loads(job_cli(farm, "job", poison, "--json").stdout)
    assert failed["status"] == "failed" and "always fails" in failed["error"]
    assert failed["outputs"] == [] and failed["history"][-1]["to"] == "failed"
    assert "always fails" in job_cli(farm, "job", poison).stdout

    reused = json.loads(job_cli(farm, "job", farm["reused"], "--json").stdout)
    assert reused["reused_from"] == ok and reused["device_seconds"] == 0
    assert [o["sha256"] for o in reused["outputs"]] == [farm["outputs"][ok].sha256]
    assert f"the outputs of job {ok}" in job_cli(farm, "job", farm["reused"]).stdout


def test_prefixes_and_status_of_a_job(farm: dict[str, Any]) -> None:
    flaky = farm["ids"][1]
    short = job_cli(farm, "job", flaky[:5])
    assert short.returncode == 1 and "no job" in short.stderr and "Traceback" not in short.stderr
    other = job_cli(farm, "job", flaky, "--project", "someone-else")
    assert other.returncode == 1 and "no job" in other.stderr
    assert job_cli(farm, "job", farm["batch"]).returncode == 1  # a batch is not a job
    # `status` given a job's id shows the job
    shown = job_cli(farm, "status", flaky[:8])
    assert shown.returncode == 0 and "attempt 2 of 3" in shown.stdout, shown.stderr
    assert json.loads(job_cli(farm, "status", flaky, "--json").stdout)["id"] == flaky
    neither = job_cli(farm, "status", "0" * 32)
    assert neither.returncode == 1 and "no batch or job" in neither.stderr


def test_status_wait_exits_by_the_batch_outcome(farm: dict[str, Any]) -> None:
    done = job_cli(farm, "status", farm["reused_batch"][:8], "--wait")
    assert done.returncode == 0, done.stderr
    assert "succeeded" in done.stdout
    failed = job_cli(farm, "status", farm["batch"], "--wait", "--json")
    assert failed.returncode == 1, failed.stderr
    summary = json.loads(failed.stdout)
    assert summary["id"] == farm["batch"] and summary["status"] == "failed"
    assert [f["job_id"] for f in summary["failures"]] == [farm["ids"][2]]
    bare = job_cli(farm, "status", "--wait")
    assert bare.returncode == 2 and "--wait needs a BATCH" in bare.stderr
