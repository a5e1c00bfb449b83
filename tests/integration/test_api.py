"""The HTTP API in-process (FastAPI's test client) on real PostgreSQL and Redis: auth, project
isolation, validation errors, limits, health and metrics, problem answers for bad input and bad
stored outputs; schemathesis against its OpenAPI. (What needs a real server process or a real
outage is in tests/e2e/test_api_hardening.py.)"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from pydantic import SecretStr
from schemathesis.specs.openapi.checks import positive_data_acceptance
from sqlalchemy import select

from api.app import create_app
from jobs.db import upgrade
from jobs.models import ApiToken, Batch, Job, Output, utcnow
from jobs.settings import Settings
from jobs.tokens import create_token


@pytest.fixture
def farm(tmp_path: Path, pg_url: str, redis_url: str) -> dict[str, Any]:
    upgrade(pg_url)
    cfg = Settings(database_url=pg_url, broker_url=redis_url, data_dir=tmp_path / "data",
                   storage_url=(tmp_path / "out").as_uri(), api_rate_per_minute=6000,
                   api_rate_burst=1000, api_max_body_bytes=64 * 1024,
                   api_admin_token=SecretStr(ADMIN))
    app = create_app(cfg)
    with app.state.sessions.begin() as s:
        a = create_token(s, "studio-a", "tests")
        b = create_token(s, "studio-b", "tests")
    return {"app": app, "client": TestClient(app), "a": a.token, "b": b.token, "settings": cfg}


ADMIN = "operators-only-secret"


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
                         ("POST", f"/v1/batches/{batch}/pause"),
                         ("POST", f"/v1/batches/{batch}/resume"),
                         ("POST", f"/v1/batches/{batch}/retry"), ("GET", f"/v1/jobs/{job_id}"),
                         ("GET", f"/v1/jobs/{job_id}/outputs/payload.bin")]:
        assert c.request(method, path, headers=other).status_code == 404, path
        assert c.request(method, path).status_code == 401, path
        assert c.request(method, path, headers=auth("gf_not-a-token")).status_code == 401, path
    assert c.get("/v1/batches", headers=other).json()["total"] == 0
    assert c.get(f"/v1/batches/{batch}", headers=auth(farm["a"])).json()["counts"]["cancelled"] == 0
    r = c.post(f"/v1/batches/{batch}/cancel", headers=auth(farm["a"]))
    assert r.status_code == 200 and r.json()["changed"] == 2


def test_pause_and_resume_a_batch(farm: dict[str, Any]) -> None:
    c, a = farm["client"], auth(farm["a"])
    batch = c.post("/v1/batches", json={"jobs": JOBS}, headers=a).json()["batch_id"]
    r = c.post(f"/v1/batches/{batch}/pause", headers=a)
    assert r.status_code == 200 and r.json()["changed"] == 2
    view = c.get(f"/v1/batches/{batch}", headers=a).json()
    assert view["status"] == "paused" and view["counts"]["paused"] == 2
    assert c.post(f"/v1/batches/{batch}/pause", headers=a).json()["changed"] == 0
    r = c.post(f"/v1/batches/{batch}/resume", headers=a)
    assert r.status_code == 200 and r.json()["changed"] == 2
    view = c.get(f"/v1/batches/{batch}", headers=a).json()
    assert view["status"] == "active" and view["counts"]["queued"] == 2


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


def test_health_and_metrics_show_farm_wide_figures_only_to_the_admin_token(
        farm: dict[str, Any]) -> None:
    c = farm["client"]
    assert c.get("/healthz").json() == {"ok": True}  # anyone: ok or not, nothing more
    assert c.get("/healthz", headers=auth(farm["a"])).json() == {"ok": True}
    r = c.get("/healthz", headers=auth(ADMIN))
    assert r.status_code == 200 and r.json() == {"ok": True, "checks": {
        "database": "ok", "broker": "ok", "storage": "ok"}}
    created = c.post("/v1/batches", json={"jobs": JOBS}, headers=auth(farm["a"]))
    assert created.status_code == 201 and created.json()["published"], created.text
    assert c.get("/metrics").status_code == 401
    assert c.get("/metrics", headers=auth("gf_not-a-token")).status_code == 401
    assert c.get("/metrics", headers=auth(farm["a"])).status_code == 403  # a project's token
    r = c.get("/metrics", headers=auth(ADMIN))
    assert r.status_code == 200
    assert 'genfarm_jobs{kind="noop",state="queued"} 1.0' in r.text
    assert 'genfarm_queue_depth{queue="noop"} 1.0' in r.text
    assert "genfarm_job_latency_seconds_bucket" in r.text and "genfarm_batch_jobs_count 1.0" in r.text
    # the admin token may be configured as its sha256 only
    hashed = TestClient(create_app(farm["settings"].model_copy(update={"api_admin_token": SecretStr(
        "sha256:" + hashlib.sha256(ADMIN.encode()).hexdigest())})))
    assert hashed.get("/metrics", headers=auth(ADMIN)).status_code == 200
    assert hashed.get("/metrics", headers=auth("sha256:" + hashlib.sha256(ADMIN.encode())
                                              .hexdigest())).status_code == 401
    broken = TestClient(create_app(farm["settings"].model_copy(
        update={"storage_url": "s3://no-such-bucket-genfarm/x", "s3_endpoint_url": "http://127.0.0.1:9"})))
    r = broken.get("/healthz")
    assert r.status_code == 503 and r.json() == {"ok": False}  # no exception text, no hosts
    r = broken.get("/healthz", headers=auth(ADMIN))
    checks = r.json()["checks"]
    assert r.status_code == 503 and checks["database"] == "ok" and checks["storage"] != "ok"


def post_json(c: TestClient, body: bytes, token: str) -> Any:
    return c.post("/v1/batches", content=body,
                  headers={**auth(token), "Content-Type": "application/json"})


def test_a_json_body_error_names_the_field(farm: dict[str, Any]) -> None:
    c = farm["client"]
    for body, field, says in [
            (b'{"jobs": "x"}', "jobs", "list"),
            (b'{}', "jobs", "required"),
            (b'{"jobs": [{"kind": "noop"}], "source": 5}', "source", "string"),
            (b'{"jobs": [{"kind": "noop"}], "source": "' + b"s" * 300 + b'"}', "source", "255"),
            (b'{"jobs": [{"kind": "noop"}], "sorce": "typo"}', "sorce", "not permitted"),
            (b'{"jobs": [], "jobs": [{"kind": "noop"}]}', "", "twice"),
            (b'{"jobs": [{"kind": "noop"},\n  }', "", "line 2 column 3"),
            (b'{"jobs": [{"kind": "noop", "tag": NaN}]}', "", "NaN"),
            (b'\xff{}', "", "UTF-8"),
            (b'[' * 30_000 + b']' * 30_000, "", "invalid JSON")]:
        r = post_json(c, body, farm["a"])
        assert r.status_code == 422, (body[:60], r.text)
        [error] = r.json()["errors"]
        assert error["line"] == 0 and error["field"] == field, (body[:60], error)
        assert says in error["message"], (body[:60], error)
    r = post_json(c, b'{"jobs": [{"kind": "noop"}, {"kind": "noop", "tga": 1}]}', farm["a"])
    assert [(e["line"], e["field"]) for e in r.json()["errors"]] == [(2, "tga")]
    assert c.get("/v1/batches", headers=auth(farm["a"])).json()["total"] == 0


def test_nul_characters_are_a_422_naming_the_field(farm: dict[str, Any]) -> None:
    """PostgreSQL cannot store NUL in text: wherever a request string could reach it, the
    answer is a 422 naming the field, not a 500 from the database."""
    c, token = farm["client"], farm["a"]
    for body, line, field in [
            ({"jobs": [{"kind": "noop"}], "source": "a\x00b"}, 0, "source"),
            ({"jobs": [{"kind": "noop"}, {"kind": "noop", "fail": "nev\x00er"}]}, 2, "fail"),
            ({"jobs": [{"kind": "noop", "x": {"y": ["\x00"]}}]}, 1, "x.y.0"),
            ({"jobs": [{"kind": "noop"}], "label\x00": 1}, 0, "label\x00")]:
        r = c.post("/v1/batches", json=body, headers=auth(token))
        assert r.status_code == 422, (body, r.text)
        [error] = r.json()["errors"]
        assert (error["line"], error["field"]) == (line, field) and "NUL" in error["message"]
    r = c.post("/v1/batches", content=b'{"kind": "noop"}\n{"kind": "noop", "fail": "\\u0000"}\n',
               headers={**auth(token), "Content-Type": "application/x-ndjson"})
    assert r.status_code == 422 and [(e["line"], e["field"]) for e in r.json()["errors"]] == [
        (2, "fail")]
    for method, path, loc in [("GET", "/v1/batches/ab%00cd", ["path", "batch_id"]),
                              ("POST", "/v1/batches/%00/cancel", ["path", "batch_id"]),
                              ("POST", "/v1/batches/%00abc/retry", ["path", "batch_id"]),
                              ("GET", "/v1/jobs/x%00", ["path", "job_id"]),
                              ("GET", "/v1/jobs/abc/outputs/a%00b", ["path", "name"]),
                              ("GET", "/v1/batches?offset=1&x=%00", ["query", "x"])]:
        r = c.request(method, path, headers=auth(token))
        assert r.status_code == 422, (path, r.text)
        assert r.json()["detail"][0]["loc"] == loc and "NUL" in r.json()["detail"][0]["msg"]
    assert c.get("/v1/batches", headers=auth(token)).json()["total"] == 0


def test_requests_without_a_valid_token_are_rate_limited_per_client(farm: dict[str, Any]) -> None:
    app = create_app(farm["settings"].model_copy(
        update={"api_rate_per_minute": 1, "api_rate_burst": 3}))
    guesser = TestClient(app, client=("10.0.0.1", 40000))
    codes = [guesser.get("/v1/batches", headers=auth(f"gf_guess-{i}")).status_code
             for i in range(2)] + [guesser.get("/v1/batches").status_code for _ in range(2)]
    assert codes == [401, 401, 401, 429]
    r = guesser.get("/v1/batches", headers=auth("gf_guess-again"))
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    # spent: even a real token from that address waits (it would otherwise tell right from wrong)
    assert guesser.get("/v1/batches", headers=auth(farm["a"])).status_code == 429
    assert guesser.get("/metrics", headers=auth("wrong")).status_code == 429
    other = TestClient(app, client=("10.0.0.2", 40000))
    assert other.get("/v1/batches", headers=auth("gf_guess")).status_code == 401
    assert other.get("/v1/batches", headers=auth(farm["a"])).status_code == 200


def add_output(farm: dict[str, Any], job: Job, name: str, data: bytes, key: str | None = None,
               store_it: bool = True) -> str:
    """An output as a worker records it: the object in storage, then its row."""
    store = farm["app"].state.farm.storage
    key = key or store.job_key("studio-a", job.batch_id, job.id, name)
    if store_it:
        store.put(key, data, "application/octet-stream")
    with farm["app"].state.sessions.begin() as s:
        s.add(Output(job_id=job.id, name=name, key=key, sha256=hashlib.sha256(data).hexdigest(),
                     bytes=len(data), content_type="application/octet-stream"))
    return str(key)


def test_outputs_download_by_configured_urls_and_bad_ones_are_clear_problems(
        farm: dict[str, Any]) -> None:
    c, token = farm["client"], farm["a"]
    batch = c.post("/v1/batches", json={"jobs": JOBS}, headers=auth(token)).json()["batch_id"]
    with farm["app"].state.sessions() as s:
        job = s.scalars(select(Job).where(Job.batch_id == batch).order_by(Job.index)).first()
        assert job is not None
    store = farm["app"].state.farm.storage
    add_output(farm, job, "good.bin", b"the bytes")
    damaged = add_output(farm, job, "damaged.bin", b"as recorded")
    with farm["app"].state.sessions.begin() as s:  # another project's object, by a bad row
        s.add(Batch(id="b" * 32, project="studio-b", source="t", job_count=1, created_at=utcnow()))
    theirs = add_output(farm, job, "theirs.bin", b"not yours",
                        key=store.job_key("studio-b", "b" * 32, "c" * 32, "x.bin"))
    (store.root.parent / "outside.bin").write_bytes(b"not yours")
    for name, key in [("escape.bin", "../outside.bin"),
                      ("sneak.bin", store.batch_prefix("studio-a", batch) + "../../../outside.bin")]:
        add_output(farm, job, name, b"not yours", key=key, store_it=False)
    folder = add_output(farm, job, "folder.bin", b"x")

    r = c.get(f"/v1/jobs/{job.id}", headers={**auth(token), "Host": "evil.example"})
    urls = {o["name"]: o["url"] for o in r.json()["outputs"]}
    assert urls["good.bin"] == f"/v1/jobs/{job.id}/outputs/good.bin" and "evil" not in r.text
    public = TestClient(create_app(farm["settings"].model_copy(
        update={"api_public_url": "https://farm.example.com/gf/"})))
    r = public.get(f"/v1/jobs/{job.id}", headers={**auth(token), "Host": "evil.example",
                                                   "X-Forwarded-Host": "evil.example"})
    assert {o["url"] for o in r.json()["outputs"] if o["name"] == "good.bin"} == {
        f"https://farm.example.com/gf/v1/jobs/{job.id}/outputs/good.bin"}
    r = c.get(urls["good.bin"], headers=auth(token))
    assert r.status_code == 200 and r.content == b"the bytes"

    store.path_of(damaged).write_bytes(b"overwritten")  # the stored object no longer matches
    r = c.get(urls["damaged.bin"], headers=auth(token))
    assert r.status_code == 502 and "sha256" in r.json()["detail"] and b"overwritten" not in r.content
    for name in ("theirs.bin", "escape.bin", "sneak.bin"):
        r = c.get(urls[name], headers=auth(token))
        assert r.status_code == 409 and "key" in r.json()["detail"], r.text
        assert b"not yours" not in r.content and "outside" not in r.text
    assert store.get(theirs) == b"not yours"  # it exists; it is just not served

    store.path_of(folder).unlink()
    store.path_of(folder).mkdir()  # reading it fails in a way no handler foresees
    quiet = TestClient(farm["app"], raise_server_exceptions=False)
    r = quiet.get(urls["folder.bin"], headers=auth(token))
    assert r.status_code == 500 and r.json() == {"detail": "internal error (logged)"}


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


def test_usage_and_a_budget_refusal(farm: dict[str, Any]) -> None:
    from jobs.budgets import set_budget

    c, a = farm["client"], auth(farm["a"])
    assert c.post("/v1/batches", json={"jobs": JOBS}, headers=a).status_code == 201
    with farm["app"].state.sessions.begin() as s:
        set_budget(s, "studio-a", 0.005)  # less than the two jobs' benchmark figures (0.00675)
    r = c.post("/v1/batches", json={"jobs": JOBS}, headers=a)
    assert r.status_code == 402, r.text
    assert "device-seconds left" in r.json()["detail"] and "needs an estimated" in r.json()["detail"]
    used = c.get("/v1/usage", headers=a).json()
    assert used["project"] == "studio-a" and used["jobs"] == 2
    assert used["budget"]["device_seconds"] == 0.005 and used["budget"]["left"] == 0.005
    other = c.get("/v1/usage", headers=auth(farm["b"])).json()
    assert other["jobs"] == 0 and other["budget"] is None  # each project sees its own
    assert c.get("/v1/usage?since=2999-01-01", headers=a).json()["jobs"] == 0
    assert c.get("/v1/usage").status_code == 401


def test_the_batch_view_shows_waiting_and_reused_jobs(farm: dict[str, Any]) -> None:
    c, a = farm["client"], auth(farm["a"])
    jobs = [{"kind": "noop", "tag": 1}, {"kind": "noop", "tag": 2, "after": [1]}]
    batch = c.post("/v1/batches", json={"jobs": jobs}, headers=a).json()["batch_id"]
    view = c.get(f"/v1/batches/{batch}", headers=a).json()
    assert view["counts"]["waiting"] == 1 and view["counts"]["queued"] == 1
    with farm["app"].state.sessions.begin() as s:  # as a worker records them
        from jobs import lifecycle

        ids = list(s.scalars(select(Job.id).where(Job.batch_id == batch)))
        s.execute(Job.__table__.update().where(Job.id.in_(ids)).values(status="queued"))
        claimed = lifecycle.claim(s, ids, "w:1", 60)
        lifecycle.record(s, "w:1", [lifecycle.JobResult(j.id, [], 0.01) for j in claimed])
    again = c.post("/v1/batches", json={"jobs": jobs}, headers=a).json()
    assert again["reused"] == 2
    view = c.get(f"/v1/batches/{again['batch_id']}", headers=a).json()
    assert view["reused"] == 2 and view["counts"]["succeeded"] == 2
    job = c.get(f"/v1/jobs/{ids[0]}", headers=a).json()
    assert job["reused_from"] is None
    forced = c.post("/v1/batches?force=true", json={"jobs": jobs}, headers=a).json()
    assert forced["reused"] == 0


def test_names_and_labels_set_at_submission_and_filter_the_listing(farm: dict[str, Any]) -> None:
    c, a, b = farm["client"], auth(farm["a"]), auth(farm["b"])
    made = c.post("/v1/batches", headers=a, json={
        "jobs": JOBS, "name": "sh010 lookdev", "labels": {"shot": "010", "artist": "mia"}}).json()
    assert made["id"] == made["batch_id"]  # one id, named as everywhere else
    jsonl = {**a, "Content-Type": "application/x-ndjson"}
    other = c.post("/v1/batches?name=sh020&label=shot=020&label=artist=mia", headers=jsonl,
                   content=b'{"kind": "noop", "tag": 9}\n').json()
    c.post("/v1/batches", headers=b, json={"jobs": JOBS, "labels": {"shot": "010"}})
    view = c.get(f"/v1/batches/{made['id']}", headers=a).json()
    assert (view["name"], view["labels"]) == ("sh010 lookdev", {"artist": "mia", "shot": "010"})

    def listed(query: str, who: dict[str, str] = a) -> list[str]:
        r = c.get(f"/v1/batches{query}", headers=who)
        assert r.status_code == 200, r.text
        return [item["id"] for item in r.json()["items"]]

    assert listed("?label=shot=010") == [made["id"]]  # studio-b's shot 010 is not studio-a's
    assert set(listed("?label=artist=mia")) == {made["id"], other["id"]}
    assert listed("?label=artist=mia&label=shot=020") == [other["id"]]
    assert listed("?name=sh020") == [other["id"]] and listed("?label=shot=030") == []
    assert len(listed("?label=shot=010", b)) == 1 and listed("?name=sh020", b) == []
    # bad labels: named, nothing written
    before = len(listed(""))
    r = c.post("/v1/batches", headers=a, json={"jobs": JOBS, "labels": {"Shot!": "1"}})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "labels.Shot!"
    r = c.post("/v1/batches?label=noequals", headers=jsonl, content=b'{"kind": "noop"}\n')
    assert r.status_code == 422 and "expected key=value" in r.json()["errors"][0]["message"]
    r = c.post("/v1/batches", headers=a, json={"jobs": JOBS, "webhook_url": "file:///etc/x"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "webhook_url"
    assert len(listed("")) == before
    assert c.get("/v1/batches?label=x", headers=a).status_code == 400
