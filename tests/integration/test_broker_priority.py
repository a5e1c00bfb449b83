"""Message priorities on real brokers: a worker serving several models takes the message of
the higher-priority unit first, whichever queue it is on (within a queue the database's claim
order decides, see test_scheduling). Redis here; RabbitMQ where one runs on localhost. And a
unit is one message: Celery's task-sent event only when Flower is asked to list unreceived units."""

from __future__ import annotations

import base64
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Consumer

from jobs.settings import Settings
from jobs.submit import WorkUnit
from workers.app import make_app, message_priority, publisher

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"


def first_delivered(settings: Settings, units: list[WorkUnit]) -> list[str]:
    app = make_app(settings)
    publisher(app)(units)
    got: list[Any] = []
    queues = [q for q in app.conf.task_queues if q.name in ("noop", "aether")]
    def take(body: Any, message: Any) -> None:
        got.append(body)
        message.ack()

    with (app.connection_for_read() as conn,
          Consumer(conn, queues=queues, callbacks=[take], accept=["json"], prefetch_count=1)):
        while len(got) < len(units):
            conn.drain_events(timeout=10)
    return [body[0][0][0] for body in got]  # the first job id of each unit, in delivery order


def units() -> list[WorkUnit]:
    return [WorkUnit("noop", "noop:noop", ["low-1"], -100),
            WorkUnit("noop", "noop:noop", ["low-2"], -100),
            WorkUnit("aether", "generate:aether:64x64", ["high"], 500),
            WorkUnit("noop", "noop:noop", ["lowest"], -1000)]


def test_on_redis_the_higher_priority_unit_is_delivered_first(redis_url: str,
                                                             tmp_path: Path) -> None:
    settings = Settings(_env_file=None, broker_url=redis_url, data_dir=tmp_path)
    assert first_delivered(settings, units()) == ["high", "low-1", "low-2", "lowest"]


def test_on_rabbitmq_the_higher_priority_unit_is_delivered_first(tmp_path: Path) -> None:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
    except OSError:
        pytest.skip("no RabbitMQ on localhost:5672 (Redis is the production broker)")
    settings = Settings(_env_file=None, broker_url=RABBITMQ_URL, data_dir=tmp_path)
    app = make_app(settings)
    with app.connection_for_write() as conn:  # queues of an earlier run would hold messages
        for queue in app.conf.task_queues:
            queue.bind(conn.default_channel).declare()
            queue.bind(conn.default_channel).purge()
    assert first_delivered(settings, units()) == ["high", "low-1", "low-2", "lowest"]


@pytest.mark.parametrize(("url", "priority", "expected"), [
    ("redis://x", 1000, 0), ("redis://x", -1000, 9), ("redis://x", 0, 5),
    ("amqp://x", 1000, 9), ("amqp://x", -1000, 0), ("amqp://x", 500, 7),
])
def test_job_priorities_map_onto_message_priorities(url: str, priority: int,
                                                    expected: int, tmp_path: Path) -> None:
    app = make_app(Settings(_env_file=None, broker_url=url, data_dir=tmp_path))
    assert message_priority(app, priority) == expected


def _published_events(settings: Settings, batch: list[WorkUnit]) -> list[str]:
    """The Celery event types (task-sent, ...) published on Redis while ``batch`` is published."""
    client = redis.Redis.from_url(str(settings.broker_url))
    events = client.pubsub()
    events.psubscribe("*celeryev*")
    events.get_message(timeout=2)  # the subscription's confirmation
    publisher(make_app(settings))(batch)
    seen, deadline = [], time.monotonic() + 2
    while time.monotonic() < deadline:
        message = events.get_message(timeout=0.2)
        if message and message["type"] == "pmessage":  # kombu's envelope, the event in its body
            body = base64.b64decode(json.loads(message["data"])["body"])
            seen.append(json.loads(body)["type"])
    events.close()
    client.close()
    return seen


def test_units_are_published_without_a_sent_event_unless_flower_asks(redis_url: str,
                                                                      tmp_path: Path) -> None:
    """A unit is one broker message: the task-sent event (another message per unit, for Flower's
    list of units not yet received) only with GENFARM_FLOWER_SENT_EVENTS."""
    quiet = Settings(_env_file=None, broker_url=redis_url, data_dir=tmp_path)
    assert _published_events(quiet, units()) == []
    loud = Settings(_env_file=None, broker_url=redis_url, data_dir=tmp_path,
                    flower_sent_events=True)
    assert _published_events(loud, units()) == ["task-sent"] * len(units())
