"""The reconciler: expired leases back to the queue, lost messages republished, batches finalized."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from jobs import lifecycle
from jobs.batches import done_batches, finalize_if_done, open_batches
from jobs.db import make_engine, session_factory
from jobs.pulse import expire_silent_units
from jobs.settings import Settings
from jobs.submit import Publisher, publish_due
from jobs.turns import take_turn
from storage import open_storage

log = logging.getLogger("genfarm.reconciler")


@dataclass
class ReconcileReport:
    requeued: int = 0
    failed: int = 0
    published: int = 0
    finalized: int = 0

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


class Reconciler:
    def __init__(self, settings: Settings, publish: Publisher) -> None:
        self.settings = settings
        self.publish = publish
        self.engine = make_engine(settings.resolved_database_url())
        self.sessions = session_factory(self.engine)
        self.storage = open_storage(settings.resolved_storage_url(),
                                    endpoint_url=settings.s3_endpoint_url)
        # A forked pool child must never use (or close) the parent's connections.
        os.register_at_fork(after_in_child=lambda: self.engine.dispose(close=False))

    def run_if_due(self) -> ReconcileReport | None:
        """The worker's tick: a pass if it is this worker's turn (the farm's last pass, on any
        worker, is an interval old), else None (see jobs.turns)."""
        with self.sessions.begin() as session:
            if not take_turn(session, "reconcile", self.settings.reconcile_interval):
                return None
        return self.run_once()

    def run_once(self) -> ReconcileReport:
        """A pass now, whoever ran the last (`genfarm reconcile`)."""
        report = ReconcileReport()
        with self.sessions.begin() as session:
            expire_silent_units(session, self.settings.pulse_grace_seconds)
            back, dead = lifecycle.expire_leases(session)
        report.requeued, report.failed = len(back), len(dead)
        with self.sessions.begin() as session:  # released jobs are published just below
            _, upstream = lifecycle.release_waiting(session)
        report.failed += upstream
        report.published = publish_due(
            self.sessions, self.publish, unit_size=self.settings.unit_size,
            republish_after_s=self.settings.republish_after_seconds)
        with self.sessions() as session:  # which open batches are done: one connection, not
            batch_ids = done_batches(session, open_batches(session))  # a checkout each
        for batch_id in batch_ids:
            if finalize_if_done(self.sessions, self.storage, batch_id):
                report.finalized += 1
        if any(report.as_dict().values()):
            log.info("reconciled: %s", report.as_dict())
        return report

    def recover_lost(self) -> int:
        """The quick pass, every GENFARM_PULSE_SECONDS: jobs of units that went silent (their
        worker was killed, its host lost) back to the queue and published. One query over the
        pulses (a row per running unit) when nothing was lost."""
        with self.sessions.begin() as session:
            if not expire_silent_units(session, self.settings.pulse_grace_seconds):
                return 0
            back, dead = lifecycle.expire_leases(session)
        if back or dead:
            log.warning("units went silent: %d jobs back in the queue, %d failed (out of "
                        "attempts)", len(back), len(dead))
        if back:
            publish_due(self.sessions, self.publish, unit_size=self.settings.unit_size,
                        republish_after_s=self.settings.republish_after_seconds)
        return len(back)

    def close(self) -> None:
        self.engine.dispose()
