"""Helpers for tests that drive real processes: submit through the CLI, wait on the database."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from jobs.db import make_engine, session_factory
from jobs.models import Batch, Job, JobEvent, Output
from tests.conftest import Workers, run_cli


def submit(env: dict[str, str], tmp_path: Path, *lines: dict[str, Any], project: str = "acme") -> str:
    path = tmp_path / f"jobs-{time.monotonic_ns()}.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    result = run_cli("submit", str(path), "--project", project, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["batch_id"])


class Db:
    """Read-only looks at the database from the test, tolerant of a database that is down."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self.sessions = session_factory(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def counts(self, batch_id: str) -> dict[str, int]:
        with self.sessions() as s:
            rows = s.execute(select(Job.status, func.count()).where(Job.batch_id == batch_id)
                             .group_by(Job.status)).all()
        return {str(k): int(v) for k, v in rows}

    def finished(self, batch_id: str) -> Batch | None:
        with self.sessions() as s:
            batch = s.get(Batch, batch_id)
            return batch if batch is not None and batch.finished_at is not None else None

    def jobs(self, batch_id: str) -> list[Job]:
        with self.sessions() as s:
            return list(s.scalars(select(Job).where(Job.batch_id == batch_id).order_by(Job.index)))

    def outputs(self, batch_id: str) -> list[Output]:
        with self.sessions() as s:
            return list(s.scalars(select(Output).join(Job, Job.id == Output.job_id)
                                  .where(Job.batch_id == batch_id)))

    def events(self, batch_id: str) -> list[JobEvent]:
        with self.sessions() as s:
            return list(s.scalars(select(JobEvent).join(Job, Job.id == JobEvent.job_id)
                                  .where(Job.batch_id == batch_id).order_by(JobEvent.id)))

    def wait(self, batch_id: str, workers: Workers, timeout: float = 240,
             until: Any = None) -> Any:
        """Poll until ``until(db)`` is truthy (default: the batch is finished)."""
        check = until or (lambda db: db.finished(batch_id))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                result = check(self)
                if result:
                    return result
            except OperationalError:
                pass  # the database is down on purpose in some tests
            for proc in workers.procs:
                if proc.poll() is not None and proc.returncode not in (0, -9, -15):
                    raise AssertionError(f"a worker died ({proc.returncode})\n{workers.logs()}")
            time.sleep(0.25)
        raise AssertionError(f"timed out; counts {self.counts(batch_id)}\n{workers.logs()}")


def assert_exactly_one_output_each(db: Db, batch_id: str, store: Any, project: str = "acme") -> None:
    """Every job succeeded with one output row and one object; no other object under the batch."""
    jobs = db.jobs(batch_id)
    outputs = db.outputs(batch_id)
    assert {j.status for j in jobs} == {"succeeded"}, db.counts(batch_id)
    assert len(outputs) == len(jobs) == len({o.job_id for o in outputs})
    keys = set(store.list(store.batch_prefix(project, batch_id)))
    manifest = store.batch_prefix(project, batch_id) + "manifest.jsonl"
    assert keys == {o.key for o in outputs} | {manifest}, "orphan or missing objects"
    for out in outputs:
        store.get(out.key, sha256=out.sha256)


class FlakyProxy:
    """An HTTP proxy on loopback in front of an S3 endpoint that answers some requests with
    503 instead of forwarding them: every ``fail_every``-th request of the given methods."""

    def __init__(self, target: str, fail_every: int = 4, methods: tuple[str, ...] = ("PUT",)) -> None:
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlparse

        parsed = urlparse(target)
        proxy = self
        self.failed = 0
        self.forwarded = 0
        self._seen = 0
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if self.command in methods:
                    with proxy._lock:
                        proxy._seen += 1
                        fail = proxy._seen % fail_every == 0
                        proxy.failed += fail
                    if fail:
                        payload = b"<Error><Code>ServiceUnavailable</Code></Error>"
                        self.send_response(503)
                        self.send_header("Content-Length", str(len(payload)))
                        self.end_headers()
                        self.wfile.write(payload)
                        return
                conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                with proxy._lock:
                    proxy.forwarded += 1
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
