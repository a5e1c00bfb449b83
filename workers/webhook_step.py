"""The worker bootstep that sends webhook deliveries from the worker's main process."""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import bootsteps

log = logging.getLogger("genfarm.worker")


class WebhookStep(bootsteps.StartStopStep):
    """Runs a :class:`jobs.webhooks.Deliverer` in a background thread of the worker's main
    process (after the pool has forked), stopped with the worker. Its own engine: pool
    processes never use it, and a receiver that is slow holds up none of the farm's work."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.deliverer: Any = None
        self.engine: Any = None

    def start(self, worker: Any) -> None:
        from jobs.db import make_engine, session_factory
        from jobs.webhooks import Deliverer

        settings = worker.app.genfarm_settings
        engine = self.engine = make_engine(settings.resolved_database_url(),
                                           connect_timeout=settings.db_connect_timeout)
        # a pool process forked later must never use (or close) these connections
        os.register_at_fork(after_in_child=lambda: engine.dispose(close=False))
        self.deliverer = Deliverer.from_settings(settings, session_factory(engine))
        self.deliverer.start()

    def stop(self, worker: Any) -> None:
        if self.deliverer is not None:
            try:
                self.deliverer.stop()
            except Exception:  # noqa: BLE001 - the leases expire and another worker sends them
                log.warning("could not stop the webhook deliverer cleanly", exc_info=True)
            self.deliverer = None
        if self.engine is not None:
            self.engine.dispose()
            self.engine = None
