"""The naive farm genfarm is measured against: one Celery task per job, one database update per
state change, one output write per job. Same tables, same storage, same broker.

Run as a worker: celery -A benchmarks.naive worker (settings from GENFARM_* variables).
"""

from __future__ import annotations

import hashlib
import os

from celery import Celery
from sqlalchemy import insert, update

from jobs.db import make_engine
from jobs.models import Job, Output, utcnow
from jobs.settings import Settings
from storage import open_storage

settings = Settings()
app = Celery("naive", broker=settings.resolved_broker_url(), set_as_current=False)
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1, task_ignore_result=True,
                task_serializer="json", accept_content=["json"], worker_hijack_root_logger=False)
_state: dict[str, object] = {}


def _deps():  # type: ignore[no-untyped-def]
    if _state.get("pid") != os.getpid():
        _state.update(pid=os.getpid(), engine=make_engine(settings.resolved_database_url()),
                      storage=open_storage(settings.resolved_storage_url(),
                                           endpoint_url=settings.s3_endpoint_url))
    return _state["engine"], _state["storage"]


@app.task(name="naive.run_job")
def run_job(job_id: str, project: str, batch_id: str, payload_bytes: int) -> None:
    engine, storage = _deps()
    with engine.begin() as conn:
        conn.execute(update(Job).where(Job.id == job_id, Job.status == "queued")
                     .values(status="running", attempt=Job.attempt + 1, started_at=utcnow()))
    seed = hashlib.sha256(job_id.encode()).digest()
    body = (seed * (payload_bytes // 32 + 1))[:payload_bytes]
    key = storage.job_key(project, batch_id, job_id, "payload.bin")
    stored = storage.put(key, body, "application/octet-stream")
    with engine.begin() as conn:
        conn.execute(update(Job).where(Job.id == job_id, Job.status == "running")
                     .values(status="succeeded", finished_at=utcnow()))
        conn.execute(insert(Output).values(job_id=job_id, name="payload.bin", key=stored.key,
                                           sha256=stored.sha256, bytes=stored.bytes,
                                           content_type=stored.content_type, created_at=utcnow()))
