"""Prometheus metrics, read from the database (and the broker) at scrape time."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from jobs.catalog import Catalog
from jobs.models import Batch, Job, utcnow
from jobs.settings import Settings

log = logging.getLogger("genfarm.api")

LATENCY_BUCKETS = [1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600]
BATCH_BUCKETS = [1, 10, 100, 1000, 10_000, 100_000]


def _histogram(name: str, doc: str, values: Sequence[float],
               buckets: Sequence[float]) -> HistogramMetricFamily:
    cumulative, total = [], 0.0
    for bound in buckets:
        cumulative.append((str(bound), float(sum(1 for v in values if v <= bound))))
    cumulative.append(("+Inf", float(len(values))))
    total = float(sum(values))
    family = HistogramMetricFamily(name, doc)
    family.add_metric([], cumulative, total)
    return family


class FarmCollector(Collector):
    def __init__(self, sessions: Any, queue_depth: Any) -> None:
        self.sessions = sessions
        self.queue_depth = queue_depth  # () -> {queue: depth}, or None where unknown

    def collect(self) -> Iterator[Any]:
        with self.sessions() as s:
            by_state = s.execute(select(Job.kind, Job.status, func.count())
                                 .group_by(Job.kind, Job.status)).all()
            seconds = s.execute(select(Job.kind, func.coalesce(func.sum(Job.device_seconds), 0.0))
                                .group_by(Job.kind)).all()
            sizes = [float(n) for n in s.scalars(select(Batch.job_count)
                                                 .order_by(Batch.created_at.desc()).limit(10_000))]
            since = utcnow() - timedelta(hours=1)
            recent = s.execute(select(Job.created_at, Job.finished_at).where(
                Job.status == "succeeded", Job.finished_at >= since).limit(100_000)).all()
        jobs = GaugeMetricFamily("genfarm_jobs", "Jobs by state and kind.", labels=["state", "kind"])
        for kind, status, n in by_state:
            jobs.add_metric([str(status), str(kind)], float(n))
        yield jobs
        device = CounterMetricFamily("genfarm_device_seconds", "Device seconds spent, by kind.",
                                     labels=["kind"])
        for kind, total in seconds:
            device.add_metric([str(kind)], float(total))
        yield device
        yield _histogram("genfarm_batch_jobs", "Jobs per submitted batch (last 10,000 batches).",
                         sizes, BATCH_BUCKETS)
        yield _histogram("genfarm_job_latency_seconds",
                         "Submission to success, jobs finished in the last hour.",
                         [(f - c).total_seconds() for c, f in recent], LATENCY_BUCKETS)
        depths = self.queue_depth()
        if depths is not None:
            queue = GaugeMetricFamily("genfarm_queue_depth", "Messages waiting per queue.",
                                      labels=["queue"])
            for name, depth in depths.items():
                queue.add_metric([name], float(depth))
            yield queue


def priority_lists(queue: str) -> list[str]:
    """The Redis lists of one queue: priority 0 under its own name, 1..9 as ``queue:N``."""
    return [queue] + [f"{queue}:{p}" for p in range(1, 10)]


def queue_depths(settings: Settings, catalog: Catalog) -> dict[str, int] | None:
    """Messages waiting in each of the farm's queues, where the broker can tell (Redis)."""
    url = settings.resolved_broker_url()
    if not url.startswith(("redis://", "rediss://")):
        return None
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:  # a queue is a list per message priority (see workers.app.broker_options)
        return {q: sum(int(client.llen(key)) for key in priority_lists(q))
                for q in catalog.queues()}
    except redis.RedisError as exc:  # the other figures still count; /healthz tells the rest
        log.warning("queue depths unavailable: %s", exc)
        return None
    finally:
        client.close()
