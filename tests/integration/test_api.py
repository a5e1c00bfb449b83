"""The HTTP API in-process (FastAPI's test client) on real PostgreSQL and Redis: auth, project
isolation, validation errors, limits, health and metrics; schemathesis against its OpenAPI."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance
from sqlalchemy import select

from api.app import create_app
from jobs.db import upgrade
from jobs.models import ApiToken
from jobs.settings import Settings
from jobs.tokens import create_token


@pytest.fixture
def farm(tmp_path: Path, pg_url: str, redis_url: str) -> dict[str, Any]:
    upgrade(pg_url)
    cfg = Settings(database_url=pg_url, broker_url=redis_url, data_dir=tmp_path / "data",
                   storage_url=(tmp_path / "out").as_uri(), api_rate_per_minute=6000,
                   api_rate_burst=1000, api_max_body_bytes=64 * 1024)
    app = create_app(cfg)
    with app.state.sessions.begin() as s:
        a = create_token(s, "studio-a", "tests")
        b = create_token(s, "studio-b", "tests")
    return {"app": app, "client": TestClient(app), "a": a.token, "b": b.token, "settings": cfg}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


JOBS = [{"kind": "noop", "tag": 1}, {"kind": "generate", "seed": 3, "width": 64, "height": 64}]


def test_tokens_are_stored_hashed(farm: dict[str, Any]) -> None:
    with farm["app"].state.sessions() as s:
        rows = s.scalars(select(ApiToken)).all()
    stored = {r.token_sha256 for r in rows}
    assert farm["a"] not in stored and farm["b"] not in stored
    assert hashlib.sha256(farm["a"].encode()).hexdigest() in stored
    assert all(farm["a"] not in str(v) for r in rows for v in r.__dict__.values())


def test_submit_json_and_jsonl_and_read_back(farm: dict[str, Any]) -> None:
    c = farm["client"]
    r = c.post("/v1/batches", json={"jobs": JOBS, "source": "pipeline"}, headers=auth(farm["a"]))
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["job_count"] == 2 and created["units"] == 2 and created["published"]
    body = b'{"kind": "noop", "tag": {"range": [0, 5]}}\n'
    r = c.post("/v1/batches", content=body, headers={**auth(farm["a"]),
                                                      "Content-Type": "application/x-ndjson"})
    assert r.status_code == 201 and r.json()["job_count"] == 5
    view = c.get(f"/v1/batches/{created['batch_id']}", headers=auth(farm["a"])).json()
    assert view["jobs"] == 2 and view["counts"]["queued"] == 2 and view["progress"] == 0
    page = c.get("/v1/batches?limit=1", headers=auth(farm["a"])).json()
    assert page["total"] == 2 and len(page["items"]) == 1
    assert c.get("/v1/batches?limit=1&offset=1", headers=auth(farm["a"])).json()["items"][0]["id"] \
        != page["items"][0]["id"]


def test_validation_errors_name_every_bad_item_and_write_nothing(farm: dict[str, Any]) -> None:
    c = farm["client"]
    bad = [{"kind": "generate", "seed": 1}, {"kind": "generate", "seed": "x"}, {"kind": "paint"},
           {"kind": "generate", "seed": 2, "width": 4096}, "text"]
    r = c.post("/v1/batches", json={"jobs": bad}, headers=auth(farm["a"]))
    assert r.status_code == 422
    found = {(e["line"], e["field"]) for e in r.json()["errors"]}
    assert {(2, "seed"), (3, "kind"), (4, "width"), (5, "")} <= found and 1 not in {f[0] for f in found}
    r = c.post("/v1/batches", content=b'{"kind": "noop"}\nnope\n',
               headers={**auth(farm["a"]), "Content-Type": "application/x-ndjson"})
    assert r.status_code == 422 and r.json()["errors"][0]["line"] == 2
    assert c.get("/v1/batches", headers=auth(farm["a"])).json()["total"] == 0


def test_a_project_sees_only_its_own_batches(farm: dict[str, Any]) -> None:
    c = farm["client"]
    batch = c.post("/v1/batches", json={"jobs": JOBS}, headers=auth(farm["a"])).json()["batch_id"]
    with farm["app"].state.sessions() as s:
        from jobs.models import Job

        job_id = s.scalars(select(Job.id).where(Job.batch_id == batch)).first()
    other = auth(farm["b"])
    for method, path in [("GET", f"/v1/batches/{batch}"), ("GET", f"/v1/batches/{batch[:8]}"),
                         ("POST", f"/v1/batches/{batch}/cancel"),
                         ("POST", f"/v1/batches/{batch}/retry"), ("GET", f"/v1/jobs/{job_id}"),
                         ("GET", f"/v1/jobs/{job_id}/outputs/payload.bin")]:
        assert c.request(method, path, headers=other).status_code == 404, path
        assert c.request(method, path).status_code == 401, path
        assert c.request(method, path, headers=auth("gf_not-a-token")).status_code == 401, path
    assert c.get("/v1/batches", headers=other).json()["total"] == 0
    assert c.get(f"/v1/batches/{batch}", headers=auth(farm["a"])).json()["counts"]["cancelled"] == 0
    r = c.post(f"/v1/batches/{batch}/cancel", headers=auth(farm["a"]))
    assert r.status_code == 200 and r.json()["changed"] == 2


def test_body_size_and_rate_limits(tmp_path: Path, farm: dict[str, Any]) -> None:
    c = farm["client"]
    big = {"jobs": [{"kind": "noop", "tag": i} for i in range(5000)]}
    assert c.post("/v1/batches", json=big, headers=auth(farm["a"])).status_code == 413
    cfg = farm["settings"].model_copy(update={"api_rate_per_minute": 1, "api_rate_burst": 3})
    slow = TestClient(create_app(cfg))
    codes = [slow.get("/v1/batches", headers=auth(farm["a"])).status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
    r = slow.get("/v1/batches", headers=auth(farm["a"]))
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    assert slow.get("/v1/batches", headers=auth(farm["b"])).status_code == 200  # per token


def test_health_and_metrics(farm: dict[str, Any]) -> None:
    c = farm["client"]
    r = c.get("/healthz")
    assert r.status_code == 200 and r.json() == {"ok": True, "checks": {
        "database": "ok", "broker": "ok", "storage": "ok"}}
    c.post("/v1/batches", json={"jobs": JOBS}, headers=auth(farm["a"]))
    text = c.get("/metrics").text
    assert 'genfarm_jobs{kind="noop",state="queued"} 1.0' in text
    assert 'genfarm_queue_depth{queue="generate"} 2.0' in text
    assert "genfarm_job_latency_seconds_bucket" in text and "genfarm_batch_jobs_count 1.0" in text
    broken = TestClient(create_app(farm["settings"].model_copy(
        update={"storage_url": "s3://no-such-bucket-genfarm/x", "s3_endpoint_url": "http://127.0.0.1:9"})))
    r = broken.get("/healthz")
    assert r.status_code == 503 and r.json()["checks"]["storage"] != "ok"


def test_openapi_conformance(farm: dict[str, Any]) -> None:
    """schemathesis against the served OpenAPI document: no 5xx, every response as documented."""
    from hypothesis import given

    schema = schemathesis.openapi.from_asgi("/openapi.json", farm["app"])
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            case.call_and_validate(headers=auth(farm["a"]),
                                   excluded_checks=[positive_data_acceptance])

        check()
