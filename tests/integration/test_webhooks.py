"""Webhooks on SQLite and PostgreSQL, against real HTTP receivers on loopback: a finished batch is
delivered once, signed, with its summary; a receiver that is down is retried with backoff and
finally failed, while finalization never waits for it; a slow receiver times out without holding
up another; two deliverers racing send each delivery once; one project sees nothing of
another's settings or deliveries (API); the CLI shows a secret once and reconcile delivers.
Where webhooks may go: link-local, metadata and other never-addresses are refused when a URL is
set or submitted; with private networks off, a receiver on loopback (by address or by name) is
never contacted and the attempt says why; name resolution counts against the attempt's
deadline."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from jobs import lifecycle
from jobs.batches import finalize_if_done
from jobs.db import make_engine, session_factory
from jobs.errors import GenfarmError
from jobs.labels import BatchMeta, check_webhook_url
from jobs.manifest import default_catalog, parse_manifest
from jobs.models import Job, WebhookAttempt, WebhookDelivery
from jobs.submit import retry_failed_jobs, submit
from jobs.tokens import create_token
from jobs.webhooks import (
    Deliverer,
    Policy,
    configure,
    deliveries_of,
    get_config,
    lease_due,
    sign,
    verify,
)
from storage import open_storage
from tests.conftest import free_port, run_cli

FAST = Policy(timeout_s=1.0, max_attempts=3, backoff_s=0.2, backoff_max_s=5.0)


@dataclass
class Got:
    at: float  # time.monotonic() when the request arrived
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A real HTTP server on loopback, in threads of its own: answers each POST with the next
    of ``statuses`` (the last one repeats) after ``delay`` seconds, and keeps what it got."""

    def __init__(self, statuses: tuple[int, ...] = (200,), delay: float = 0.0) -> None:
        self.statuses, self.delay, self.got = list(statuses), delay, list[Got]()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.got.append(Got(time.monotonic(), self.path, dict(self.headers), body))
                time.sleep(receiver.delay)
                status = receiver.statuses.pop(0) if len(receiver.statuses) > 1 else \
                    receiver.statuses[0]
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?k=1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[Any]:
    made: list[Receiver] = []

    def make(*statuses: int, delay: float = 0.0) -> Receiver:
        made.append(Receiver(statuses or (200,), delay))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture
def farm(db_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    engine = make_engine(db_url)
    yield {"sessions": session_factory(engine), "store": open_storage(tmp_path.as_uri()),
           "url": db_url}
    engine.dispose()


def finished_batch(farm: dict[str, Any], project: str = "acme", *, url: str | None = None,
                   n: int = 2, fail: int = 0, name: str = "", labels: dict[str, str] | None = None
                   ) -> str:
    """A batch of ``n`` noop jobs (``fail`` of them failing), run through claim and record and
    finalized: its delivery, if any, is pending."""
    batch = submitted(farm, project, url=url, n=n, name=name, labels=labels)
    finish(farm, batch, fail)
    return batch


def submitted(farm: dict[str, Any], project: str = "acme", *, url: str | None = None,
              n: int = 2, name: str = "", labels: dict[str, str] | None = None) -> str:
    catalog = default_catalog()
    lines = [{"kind": "noop", "tag": i} for i in range(n)]
    specs = parse_manifest("\n".join(json.dumps(line) for line in lines), catalog=catalog)
    return submit(farm["sessions"], project, specs, lambda units: None, unit_size=64,
                  catalog=catalog, meta=BatchMeta(name, labels or {}, url)).batch_id


def finish(farm: dict[str, Any], batch: str, fail: int = 0) -> float:
    """Run the batch's queued jobs (the first ``fail`` of them fail) and finalize it; returns
    how long finalization took."""
    sessions = farm["sessions"]
    with sessions.begin() as s:
        ids = list(s.scalars(select(Job.id).where(Job.batch_id == batch, Job.status == "queued")
                             .order_by(Job.index)))
        claimed = lifecycle.claim(s, ids, "w:1", 60)
        lifecycle.record(s, "w:1", [
            lifecycle.JobResult(c.id, error="drill") if i < fail else
            lifecycle.JobResult(c.id, [], 0.25) for i, c in enumerate(claimed)])
    started = time.perf_counter()
    assert finalize_if_done(sessions, farm["store"], batch)
    return time.perf_counter() - started


def delivery(farm: dict[str, Any], batch: str) -> tuple[WebhookDelivery, list[WebhookAttempt]]:
    with farm["sessions"]() as s:
        [found] = deliveries_of(s, batch)
    return found


def new_secret(farm: dict[str, Any], project: str, url: str | None = None) -> str:
    with farm["sessions"].begin() as s:
        made = configure(s, project, url=url)
    assert made.secret
    return made.secret


def test_a_finished_batch_is_delivered_once_signed_with_its_summary(
        farm: dict[str, Any], receivers: Any) -> None:
    hook = receivers()
    secret = new_secret(farm, "acme", hook.url)
    batch = finished_batch(farm, n=3, fail=1, name="sh010 lookdev", labels={"shot": "010"})
    row, attempts = delivery(farm, batch)
    assert row.status == "pending" and attempts == []  # finalization made it, sent nothing
    deliverer = Deliverer(farm["sessions"], FAST)
    assert deliverer.deliver_due(5) == {"delivered": 1}
    assert deliverer.deliver_due(5) == {}  # delivered once, not again
    [got] = hook.got
    headers = {k.lower(): v for k, v in got.headers.items()}
    assert got.path == "/hook?k=1" and headers["content-type"] == "application/json"
    assert headers["user-agent"].startswith("genfarm/")
    assert headers["x-genfarm-event"] == "batch.finished"
    assert headers["x-genfarm-delivery"] == row.id
    assert verify(secret, got.body, headers["x-genfarm-signature"])
    assert not verify(secret, got.body + b" ", headers["x-genfarm-signature"])
    assert not verify("another secret", got.body, headers["x-genfarm-signature"])
    old = int(time.time()) - 3600
    assert not verify(secret, got.body, sign(secret, got.body, old))  # a replay of long ago
    payload = json.loads(got.body)
    assert payload["event"] == "batch.finished" and payload["delivery_id"] == row.id
    b = payload["batch"]
    assert (b["id"], b["project"], b["name"], b["labels"]) == (batch, "acme", "sh010 lookdev",
                                                               {"shot": "010"})
    assert b["status"] == "failed" and b["jobs"] == 3
    assert b["counts"]["succeeded"] == 2 and b["counts"]["failed"] == 1
    assert b["device_seconds"] == pytest.approx(0.5)
    assert b["finished_at"] and b["created_at"] and b["manifest_key"].endswith("manifest.jsonl")
    row, attempts = delivery(farm, batch)
    assert (row.status, row.attempts, row.last_error) == ("delivered", 1, None)
    assert [a.status_code for a in attempts] == [200] and row.delivered_at is not None
    assert finalize_if_done(farm["sessions"], farm["store"], batch) is None  # no second one


def test_a_batch_url_wins_and_a_retried_batch_notifies_again(
        farm: dict[str, Any], receivers: Any) -> None:
    default, own = receivers(), receivers()
    new_secret(farm, "acme", default.url)
    quiet = finished_batch(farm, "other")  # no URL, no project default: nothing to send
    with farm["sessions"]() as s:
        assert deliveries_of(s, quiet) == []
    batch = finished_batch(farm, url=own.url, n=2, fail=1)
    deliverer = Deliverer(farm["sessions"], FAST)
    assert deliverer.deliver_due(5) == {"delivered": 1}
    retry_failed_jobs(farm["sessions"], lambda units: None, Job.batch_id == batch, [batch], 1,
                      unit_size=64, republish_after_s=300)
    finish(farm, batch)
    assert deliverer.deliver_due(5) == {"delivered": 1}
    assert default.got == []
    statuses = [json.loads(g.body)["batch"]["status"] for g in own.got]
    assert statuses == ["failed", "succeeded"]
    assert len({g.headers["X-Genfarm-Delivery"] for g in own.got}) == 2


def test_a_receiver_that_is_down_is_retried_with_backoff_then_failed(
        farm: dict[str, Any], receivers: Any) -> None:
    down = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    slow = receivers(delay=4.0)
    batches = [submitted(farm, url=down) for _ in range(3)]
    held = submitted(farm, url=slow.url)
    took = [finish(farm, b) for b in [*batches, held]]
    assert max(took) < 2.0, took  # finalization sends nothing and waits for nobody (4 s receiver)
    deliverer = Deliverer(farm["sessions"], FAST)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        deliverer.deliver_due(5)
        if all(delivery(farm, b)[0].status == "failed" for b in batches):
            break
        time.sleep(0.05)
    for b in batches:
        row, attempts = delivery(farm, b)
        assert (row.status, row.attempts, len(attempts)) == ("failed", 3, 3)
        assert {a.error for a in attempts} == {"connection refused"}
        assert {a.status_code for a in attempts} == {None} and row.last_error
        gaps = [(later.at - earlier.at).total_seconds()
                for earlier, later in zip(attempts, attempts[1:], strict=False)]
        assert gaps[0] >= 0.2 - 0.01 and gaps[1] >= 0.6 - 0.01, gaps  # 0.2 s, then 3x that


def test_an_error_answer_is_recorded_and_retried_until_delivered(
        farm: dict[str, Any], receivers: Any) -> None:
    flaky = receivers(500, 302, 204)
    batch = finished_batch(farm, url=flaky.url)
    deliverer = Deliverer(farm["sessions"], FAST)
    deadline = time.monotonic() + 20
    while delivery(farm, batch)[0].status == "pending" and time.monotonic() < deadline:
        deliverer.deliver_due(5)
        time.sleep(0.05)
    row, attempts = delivery(farm, batch)
    assert row.status == "delivered" and len(flaky.got) == 3  # the redirect was not followed
    assert [(a.status_code, a.error) for a in attempts] == [(500, "HTTP 500"), (302, "HTTP 302"),
                                                            (204, None)]
    with farm["sessions"]() as s:  # the project had no secret: its first delivery made one
        config = get_config(s, "acme")
    assert config.has_secret and config.url is None


def test_a_slow_receiver_times_out_without_holding_up_another(
        farm: dict[str, Any], receivers: Any) -> None:
    slow, fast = receivers(delay=4.0), receivers()
    slow_batch = finished_batch(farm, url=slow.url)  # due first
    fast_batch = finished_batch(farm, url=fast.url)
    deliverer = Deliverer(farm["sessions"], FAST, threads=4, interval_s=0.05)
    started = time.monotonic()
    deliverer.start()
    try:
        deadline = started + 10
        while delivery(farm, slow_batch)[1] == [] and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        deliverer.stop()
    assert fast.got and fast.got[0].at - started < 0.9  # before the slow one's 1 s deadline
    assert delivery(farm, fast_batch)[0].status == "delivered"
    row, [attempt] = delivery(farm, slow_batch)
    assert attempt.error == "timed out after 1 s" and attempt.status_code is None
    assert 0.9 <= attempt.seconds < 2.0 and row.status == "pending" and row.attempts == 1


def test_a_receiver_that_drips_its_answer_is_cut_off_at_the_deadline(
        farm: dict[str, Any]) -> None:
    """A socket timeout bounds each read; the deadline bounds the whole attempt."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drip() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        for ch in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 100:
            if stop.wait(0.3):
                break
            conn.sendall(bytes([ch]))
        conn.close()

    threading.Thread(target=drip, daemon=True).start()
    batch = finished_batch(farm, url=f"http://127.0.0.1:{listener.getsockname()[1]}/")
    try:
        started = time.monotonic()
        Deliverer(farm["sessions"], FAST).deliver_due(5)
        assert time.monotonic() - started < 2.5
    finally:
        stop.set()
        listener.close()
    [attempt] = delivery(farm, batch)[1]
    assert attempt.error == "timed out after 1 s"


def test_two_deliverers_racing_deliver_each_delivery_exactly_once(
        farm: dict[str, Any], receivers: Any) -> None:
    hook = receivers()
    new_secret(farm, "acme", hook.url)
    batches = [finished_batch(farm, n=1) for _ in range(24)]
    engines = [make_engine(farm["url"]) for _ in range(2)]
    rivals = [Deliverer(session_factory(e), FAST, threads=4) for e in engines]
    go = threading.Barrier(len(rivals))
    results: list[dict[str, int]] = []

    def race(d: Deliverer) -> None:
        go.wait()
        results.append(d.deliver_due(20))

    threads = [threading.Thread(target=race, args=(d,)) for d in rivals]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for e in engines:
        e.dispose()
    assert sum(r.get("delivered", 0) for r in results) == 24, results
    ids = [g.headers["X-Genfarm-Delivery"] for g in hook.got]
    assert len(ids) == len(set(ids)) == 24
    with farm["sessions"]() as s:
        assert s.scalar(select(func.count()).select_from(WebhookAttempt)) == 24
        assert set(s.scalars(select(WebhookDelivery.attempts))) == {1}
        assert set(s.scalars(select(WebhookDelivery.batch_id))) == set(batches)


def test_racing_leases_never_hand_one_delivery_to_two(farm: dict[str, Any]) -> None:
    batches = [finished_batch(farm, url="http://127.0.0.1:9/hook", n=1) for _ in range(16)]
    engines = [make_engine(farm["url"]) for _ in range(6)]
    go = threading.Barrier(len(engines))
    taken: list[list[str]] = []

    def lease(engine: Any) -> None:
        go.wait()
        taken.append([lease.id for lease in lease_due(session_factory(engine), 16, 60)])

    threads = [threading.Thread(target=lease, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for e in engines:
        e.dispose()
    every = [i for ids in taken for i in ids]
    assert len(taken) == 6 and len(every) == len(set(every)) == len(batches), taken


def test_a_project_sees_only_its_own_webhook_and_deliveries(
        farm: dict[str, Any], receivers: Any, tmp_path: Path) -> None:
    from api.app import create_app
    from jobs.settings import Settings

    app = create_app(Settings(database_url=farm["url"], data_dir=tmp_path / "data",
                              storage_url=(tmp_path / "out").as_uri(),
                              api_rate_per_minute=6000, api_rate_burst=1000))
    with farm["sessions"].begin() as s:
        a = {"Authorization": f"Bearer {create_token(s, 'studio-a').token}"}
        b = {"Authorization": f"Bearer {create_token(s, 'studio-b').token}"}
    client = TestClient(app)
    hook_a, hook_b = receivers(), receivers()
    made = client.put("/v1/webhook", json={"url": hook_a.url}, headers=a)
    assert made.status_code == 200 and len(made.json()["secret"]) == 64
    secret_a = made.json()["secret"]
    assert client.get("/v1/webhook", headers=b).json() == {
        "url": None, "has_secret": False, "updated_at": None, "secret": None}
    assert client.put("/v1/webhook", json={"url": hook_b.url}, headers=b).status_code == 200
    shown = client.get("/v1/webhook", headers=a).json()
    assert shown["url"] == hook_a.url and shown["has_secret"] and shown["secret"] is None
    again = client.put("/v1/webhook", json={"url": hook_a.url}, headers=a).json()
    assert again["secret"] is None  # made once; shown again only on rotation
    bad = client.put("/v1/webhook", json={"url": "ftp://example.com/x"}, headers=a)
    assert bad.status_code == 422 and "webhook URL" in bad.json()["detail"]

    batch_a = finished_batch(farm, "studio-a")
    batch_b = finished_batch(farm, "studio-b")
    Deliverer(farm["sessions"], FAST).deliver_due(5)
    [got_a], [got_b] = hook_a.got, hook_b.got
    assert verify(secret_a, got_a.body, got_a.headers["X-Genfarm-Signature"])
    assert not verify(secret_a, got_b.body, got_b.headers["X-Genfarm-Signature"])
    assert json.loads(got_b.body)["batch"]["project"] == "studio-b"
    assert "studio-a" not in got_b.body.decode() and batch_a not in got_b.body.decode()

    mine = client.get(f"/v1/batches/{batch_a}/deliveries", headers=a)
    assert mine.status_code == 200
    [item] = mine.json()["items"]
    assert item["status"] == "delivered" and item["attempts"][0]["status_code"] == 200
    theirs = client.get(f"/v1/batches/{batch_a}/deliveries", headers=b)
    unknown = client.get(f"/v1/batches/{'0' * 32}/deliveries", headers=b)
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json() == unknown.json()  # the same refusal whether or not it exists
    assert client.get(f"/v1/batches/{batch_b}/deliveries", headers=b).status_code == 200

    rotated = client.put("/v1/webhook", json={"rotate_secret": True}, headers=a).json()
    assert rotated["secret"] not in (None, secret_a) and rotated["url"] == hook_a.url
    assert client.put("/v1/webhook", json={"url": None}, headers=a).json()["url"] is None
    assert client.delete("/v1/webhook", headers=a).status_code == 204
    assert client.get("/v1/webhook", headers=a).json()["has_secret"] is False
    assert client.get("/v1/webhook", headers=b).json()["url"] == hook_b.url  # untouched


def test_the_cli_shows_a_secret_once_and_reconcile_delivers(
        farm: dict[str, Any], receivers: Any, tmp_path: Path) -> None:
    hook = receivers()
    env = {"GENFARM_DATABASE_URL": farm["url"], "GENFARM_DATA_DIR": str(tmp_path / "data"),
           "GENFARM_STORAGE_URL": (tmp_path / "out").as_uri()}
    made = run_cli("webhook", "set", "--project", "acme", "--url", hook.url, env=env)
    assert made.returncode == 0, made.stderr
    secret = next(line.split()[1] for line in made.stdout.splitlines()
                  if line.startswith("secret "))
    assert len(secret) == 64
    for args in (["set", "--project", "acme"], ["show", "--project", "acme"]):
        out = run_cli("webhook", *args, env=env)
        assert out.returncode == 0 and secret not in out.stdout + out.stderr
        assert hook.url in out.stdout and "secret" in out.stdout
    bad = run_cli("webhook", "set", "--project", "acme", "--url", "file:///etc/passwd", env=env)
    assert bad.returncode == 2 and "webhook URL" in bad.stderr
    batch = finished_batch(farm)
    rec = run_cli("reconcile", env=env)
    assert rec.returncode == 0 and json.loads(rec.stdout)["webhooks"] == {"delivered": 1}
    assert verify(secret, hook.got[0].body, hook.got[0].headers["X-Genfarm-Signature"])
    shown = run_cli("webhook", "deliveries", batch[:8], "--json", env=env)
    [item] = json.loads(shown.stdout)
    assert item["status"] == "delivered" and item["attempts"][0]["status_code"] == 200
    text = run_cli("webhook", "deliveries", batch, env=env).stdout
    assert "delivered" in text and "HTTP 200" in text
    rotated = run_cli("webhook", "set", "--project", "acme", "--rotate-secret", env=env)
    assert "secret " in rotated.stdout and secret not in rotated.stdout
    assert "removed" in run_cli("webhook", "clear", "--project", "acme", env=env).stdout


# -- where webhooks may go -------------------------------------------------------------------
NEVER = ["http://169.254.169.254/latest/meta-data/", "http://[fe80::1]:8080/hook",
         "https://[fd00:ec2::254]/", "http://100.100.100.200/", "http://0.0.0.0:9000/",
         "http://224.0.0.1/", "http://[::ffff:169.254.169.254]/", "http://240.0.0.1/",
         "http://[2002:a9fe:a9fe::1]/", "http://[::]/", "http://2852039166/",
         "http://0xa9fea9fe/", "http://0251.0376.0251.0376:80/", "http://168.63.129.16/",
         "http://[64:ff9b::a9fe:a9fe]/"]


@pytest.mark.parametrize("url", NEVER)
def test_a_url_naming_a_never_address_is_refused_when_set(url: str) -> None:
    with pytest.raises(GenfarmError, match="where no receiver may be"):
        check_webhook_url(url)


def test_names_and_other_addresses_pass_until_delivery() -> None:
    for url in ("https://hooks.example.com/genfarm", "http://127.0.0.1:9000/hook",
                "http://10.1.2.3/hook", "http://[::1]:9000/", "http://8.8.8.8/",
                "http://[64:ff9b::808:808]/"):  # NAT64 of a public address
        assert check_webhook_url(url) == url


def test_the_cli_and_the_api_refuse_a_metadata_url_in_one_line(tmp_path: Path) -> None:
    from api.app import create_app
    from jobs.db import upgrade
    from jobs.settings import Settings

    env = {"GENFARM_DATA_DIR": str(tmp_path / "data")}
    assert run_cli("db", "upgrade", env=env).returncode == 0
    url = f"sqlite:///{tmp_path / 'api.db'}"
    upgrade(url)
    engine = make_engine(url)
    with session_factory(engine).begin() as s:
        auth = {"Authorization": f"Bearer {create_token(s, 'acme').token}"}
    client = TestClient(create_app(Settings(database_url=url, data_dir=tmp_path / "api",
                                            storage_url=(tmp_path / "out").as_uri())))
    for url_given in ("http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/"):
        bad = client.put("/v1/webhook", json={"url": url_given}, headers=auth)
        assert bad.status_code == 422 and "where no receiver may be" in bad.json()["detail"]
        bad = client.post("/v1/batches", headers=auth, json={
            "jobs": [{"kind": "noop"}], "webhook_url": url_given})
        assert bad.status_code in (400, 422) and "where no receiver may be" in bad.text
    engine.dispose()
    result = run_cli("webhook", "set", "--project", "acme", "--url",
                     "http://169.254.169.254/latest/meta-data/", env=env)
    assert result.returncode != 0
    assert "169.254.169.254 is a link-local or metadata address" in result.stderr
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text('{"kind": "noop"}\n')
    result = run_cli("submit", str(manifest), "--project", "acme", "--webhook",
                     "http://[fd00:ec2::254]/", env=env)
    assert result.returncode != 0 and "where no receiver may be" in result.stderr
    assert "submitted" not in result.stdout


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_with_private_networks_off_a_loopback_receiver_is_never_contacted(
        farm: dict[str, Any], receivers: Any, host: str) -> None:
    hook = receivers()
    url = hook.url.replace("127.0.0.1", host)
    batch = finished_batch(farm, url=url)
    closed = Policy(timeout_s=1.0, max_attempts=1, backoff_s=0.2, allow_private=False)
    assert Deliverer(farm["sessions"], closed).deliver_due(5) == {"failed": 1}
    row, attempts = delivery(farm, batch)
    assert hook.got == [] and [a.status_code for a in attempts] == [None]
    assert row.last_error == ("receiver not allowed: its host is a loopback or private address "
                              "(GENFARM_WEBHOOK_ALLOW_PRIVATE is off)")
    # the same farm with private networks on (the embedded default) delivers it
    again = finished_batch(farm, url=url)
    assert Deliverer(farm["sessions"], Policy(timeout_s=1.0)).deliver_due(5) == {"delivered": 1}
    assert len(hook.got) == 1 and delivery(farm, again)[0].status == "delivered"


def test_a_project_default_url_to_metadata_cannot_be_stored(farm: dict[str, Any]) -> None:
    with farm["sessions"].begin() as s, pytest.raises(GenfarmError, match="link-local"):
        configure(s, "acme", url="http://169.254.169.254/")


def test_name_resolution_counts_against_the_attempts_deadline(
        farm: dict[str, Any], receivers: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The system resolver takes no deadline: a receiver whose name takes 5 s to resolve costs
    its attempt the 1 s deadline, not 5."""
    hook = receivers()
    real = socket.getaddrinfo

    def slow(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "slow.invalid":
            time.sleep(5)
            return real("127.0.0.1", *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    batch = finished_batch(farm, url=hook.url.replace("127.0.0.1", "slow.invalid"))
    started = time.monotonic()
    assert Deliverer(farm["sessions"], Policy(timeout_s=1.0, max_attempts=1)).deliver_due(5) \
        == {"failed": 1}
    assert time.monotonic() - started < 3.0
    row, attempts = delivery(farm, batch)
    assert row.last_error == "timed out after 1 s" and attempts[0].seconds < 2.0
    assert hook.got == []


def test_a_receiver_that_stalls_the_tls_handshake_is_cut_off_at_the_deadline() -> None:
    """Connecting and the TLS handshake count against the attempt's deadline too: a receiver
    that accepts the connection and never answers the handshake ends the attempt on time."""
    from jobs.receivers import post

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(server.accept()[0]), daemon=True).start()
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            post(f"https://127.0.0.1:{server.getsockname()[1]}/hook", b"{}", {}, 1.0)
        assert time.monotonic() - started < 2.0
    finally:
        for conn in held:
            conn.close()
        server.close()
