"""GET /v1/batches/{id}/jobs and /manifest in-process (FastAPI's test client) on PostgreSQL and
Redis, with jobs run by the real in-process runner: pages, the state filter, the manifest of a
finished and of an unfinished batch, and another project's batch as 404."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from jobs.models import Batch, Job
from tests.integration import test_api
from tests.integration.test_api import auth
from workers.runner import Runtime

farm = test_api.farm  # the API's fixture: a farm on PostgreSQL and Redis, two projects' tokens

LINES = [*({"kind": "noop", "tag": t} for t in range(4)), {"kind": "noop", "tag": 9, "fail": "always"}]


def run_batch(farm: dict[str, Any], batch_id: str) -> None:
    runtime = Runtime(farm["settings"])
    try:
        with runtime.sessions() as s:
            ids = list(s.scalars(select(Job.id).where(Job.batch_id == batch_id)))
        report = runtime.run_unit(ids)
        assert (report.succeeded, report.failed) == (4, 1), report
    finally:
        runtime.close()


def test_a_batch_lists_its_jobs_by_page_and_state(farm: dict[str, Any]) -> None:
    c, a = farm["client"], auth(farm["a"])
    batch = c.post("/v1/batches", json={"jobs": LINES}, headers=a).json()["batch_id"]
    run_batch(farm, batch)

    page = c.get(f"/v1/batches/{batch}/jobs?limit=2", headers=a).json()
    assert (page["total"], page["limit"], page["offset"]) == (5, 2, 0)
    assert [j["index"] for j in page["items"]] == [0, 1]
    pages = [c.get(f"/v1/batches/{batch}/jobs?limit=2&offset={o}", headers=a).json()["items"]
             for o in (2, 4, 6)]
    assert [[j["index"] for j in p] for p in pages] == [[2, 3], [4], []]
    every = c.get(f"/v1/batches/{batch[:8]}/jobs", headers=a).json()  # a prefix works too
    assert every["limit"] == 100 and len(every["items"]) == 5
    item = every["items"][0]
    assert set(item) == {"id", "index", "kind", "model", "status", "attempt", "max_attempts",
                         "error", "device_seconds", "reused_from", "created_at", "started_at",
                         "finished_at"}
    assert (item["kind"], item["model"], item["status"], item["attempt"]) == (
        "noop", "noop", "succeeded", 1)
    assert item["finished_at"] and item["error"] is None

    failed = c.get(f"/v1/batches/{batch}/jobs?status=failed", headers=a).json()
    assert failed["total"] == 1 and [j["index"] for j in failed["items"]] == [4]
    assert failed["items"][0]["status"] == "failed" and "always fails" in failed["items"][0]["error"]
    ok = c.get(f"/v1/batches/{batch}/jobs?status=succeeded&limit=3", headers=a).json()
    assert ok["total"] == 4 and len(ok["items"]) == 3
    assert c.get(f"/v1/batches/{batch}/jobs?status=queued", headers=a).json()["total"] == 0
    assert c.get(f"/v1/batches/{batch}/jobs?status=broken", headers=a).status_code == 422
    assert c.get(f"/v1/batches/{batch}/jobs?limit=0", headers=a).status_code == 422
    # each item's id is the one GET /v1/jobs/{id} shows
    shown = c.get(f"/v1/jobs/{failed['items'][0]['id']}", headers=a).json()
    assert shown["status"] == "failed" and shown["index"] == 4


def test_the_manifest_of_a_finished_and_an_unfinished_batch(farm: dict[str, Any]) -> None:
    c, a = farm["client"], auth(farm["a"])
    done = c.post("/v1/batches", json={"jobs": LINES}, headers=a).json()["batch_id"]
    run_batch(farm, done)
    r = c.get(f"/v1/batches/{done}/manifest", headers=a)
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
    with farm["app"].state.sessions() as s:
        key = s.get(Batch, done).manifest_key
    assert key and r.content == farm["app"].state.farm.storage.get(key)  # what storage holds
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert [(j["index"], j["status"]) for j in lines] == [
        (0, "succeeded"), (1, "succeeded"), (2, "succeeded"), (3, "succeeded"), (4, "failed")]
    assert all(len(j["outputs"]) == 1 for j in lines[:4]) and lines[4]["outputs"] == []

    fresh = [{"kind": "noop", "tag": 100}, {"kind": "noop", "tag": 101}]  # nothing to reuse
    waiting = c.post("/v1/batches", json={"jobs": fresh}, headers=a).json()["batch_id"]
    lines = [json.loads(line) for line in
             c.get(f"/v1/batches/{waiting}/manifest", headers=a).text.splitlines()]
    assert [(j["index"], j["status"], j["outputs"]) for j in lines] == [
        (0, "queued", []), (1, "queued", [])]
    assert lines[0]["params"]["tag"] == 100 and lines[0]["job_id"]


def test_another_projects_batch_is_not_found(farm: dict[str, Any]) -> None:
    c = farm["client"]
    batch = c.post("/v1/batches", json={"jobs": LINES[:1]}, headers=auth(farm["a"])).json()["batch_id"]
    for path in (f"/v1/batches/{batch}/jobs", f"/v1/batches/{batch[:8]}/jobs",
                 f"/v1/batches/{batch}/jobs?status=queued", f"/v1/batches/{batch}/manifest"):
        r = c.get(path, headers=auth(farm["b"]))
        assert r.status_code == 404 and r.json() == {"detail": "no such batch"}, path
        assert c.get(path).status_code == 401, path
    assert c.get(f"/v1/batches/{'0' * 32}/manifest", headers=auth(farm["a"])).status_code == 404
