"""The embedded broker is polled: how often is a setting, passed to kombu's transport."""

from __future__ import annotations

from pathlib import Path

import pytest
from kombu import Connection

from jobs.settings import Settings
from workers.app import make_app


def test_the_filesystem_broker_polls_as_often_as_the_setting_says(tmp_path: Path) -> None:
    app = make_app(Settings(data_dir=tmp_path))
    assert app.conf.broker_transport_options["polling_interval"] == 0.1
    app = make_app(Settings(data_dir=tmp_path, broker_poll_seconds=0.25))
    with app.connection_for_read() as conn:
        assert isinstance(conn, Connection)
        # the transport a worker drains: kombu sleeps this long after finding nothing
        assert conn.transport.polling_interval == 0.25


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/9", "amqp://guest@127.0.0.1//"])
def test_brokers_that_deliver_at_once_are_not_polled(tmp_path: Path, url: str) -> None:
    app = make_app(Settings(data_dir=tmp_path, broker_url=url))
    assert "polling_interval" not in app.conf.broker_transport_options
