"""The Celery app: one task that runs work units, and the reconciler in every worker.

No torch here: the CLI imports this module to publish work units.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
from collections.abc import Sequence
from typing import Any

from celery import Celery, bootsteps
from celery.signals import worker_shutting_down
from kombu import Queue

from jobs.settings import Settings
from jobs.submit import WorkUnit
from workers.webhook_step import WebhookStep

log = logging.getLogger("genfarm.worker")

RUN_UNIT = "genfarm.run_unit"


def farm_queues(settings: Settings, models: Sequence[str] | None = None) -> list[str]:
    """The Celery queues of ``models`` (default: every model of the models file): one per model,
    and one beside it for its long jobs."""
    from jobs.catalog import load_catalog

    return load_catalog(settings).queues(list(models) if models else None)


def broker_options(settings: Settings) -> dict[str, Any]:
    url = settings.resolved_broker_url()
    if url.startswith("filesystem"):
        folder = settings.broker_folder()
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {"data_folder_in": str(folder / "queue"), "data_folder_out": str(folder / "queue"),
                "processed_folder": str(folder / "processed"), "store_processed": False,
                "control_folder": str(folder / "control"),
                # kombu's default, a look a second, left a pool process up to 1 s without its
                # next unit once it finished one (a farm at 0.7 of a bare loop)
                "polling_interval": settings.broker_poll_seconds}
    if url.startswith(("redis", "rediss")):
        # The database lease decides who owns a job; redelivery after this is harmless. Ten
        # priority lists per queue, taken highest first across all of a worker's queues.
        return {"visibility_timeout": 3600, "priority_steps": list(range(10)), "sep": ":"}
    return {}


def _queue_arguments(settings: Settings) -> dict[str, Any] | None:
    """RabbitMQ honours message priorities only on queues declared with a maximum."""
    url = settings.resolved_broker_url()
    return {"x-max-priority": 9} if url.startswith(("amqp", "pyamqp")) else None


def make_app(settings: Settings, models: Sequence[str] | None = None) -> Celery:
    """A Celery app bound to ``settings``; tasks find their per-process runtime through it.
    ``models``: what a worker of this app serves (it announces them), default every model."""
    queues = farm_queues(settings)
    app = Celery("genfarm", broker=settings.resolved_broker_url(), set_as_current=False)
    app.conf.update(
        task_serializer="json", accept_content=["json"], result_serializer="json",
        task_ignore_result=True, result_backend=None,
        task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
        # for Flower: the worker's task events; task-sent only on request (a message per unit)
        worker_send_task_events=True, task_send_sent_event=settings.flower_sent_events,
        broker_connection_retry_on_startup=True, broker_connection_max_retries=None,
        # one queue per model (and one for its long jobs): Flower lists each, by model
        task_queues=[Queue(name, queue_arguments=_queue_arguments(settings))
                     for name in queues], task_default_queue=queues[0],
        task_create_missing_queues=True,
        broker_transport_options=broker_options(settings),
        worker_hijack_root_logger=False,
    )
    if settings.unit_time_limit:
        app.conf.task_soft_time_limit = settings.unit_time_limit
        app.conf.task_time_limit = settings.unit_time_limit + 60
    app.genfarm_settings = settings
    app.genfarm_models = list(models) if models else None
    # Made here, in the worker's main process, and inherited by its forked pool processes:
    # set on warm shutdown, so runners hand unstarted jobs back at their next boundary.
    draining = multiprocessing.get_context("fork").Event()
    app.genfarm_draining = draining
    worker_id = f"{socket.gethostname()}:{os.getpid()}"
    runtime_holder: dict[str, Any] = {}

    def runtime() -> Any:
        from workers.runner import Runtime

        rt = runtime_holder.get("rt")
        if rt is None or rt.pid != os.getpid():  # made after fork, never shared across processes
            rt = runtime_holder["rt"] = Runtime(settings, worker_id=worker_id, draining=draining,
                                                publish=publisher(app))
        return rt

    def on_shutdown(sig: Any = None, how: str = "", **_: Any) -> None:
        if how == "Warm":
            draining.set()

    worker_shutting_down.connect(on_shutdown, weak=False)

    app.genfarm_runtime = runtime

    @app.task(name=RUN_UNIT, acks_late=True)
    def run_unit(job_ids: list[str], batch_key: str = "", queue: str = "") -> dict[str, Any]:
        # a unit's worth of the best work on its queue (messages of an earlier release, which
        # name no queue: its own jobs)
        report = runtime().run_unit(job_ids, queue or None)
        log.info("unit %s: %s", batch_key, report.as_dict())
        return report.as_dict()

    app.steps["worker"].add(ReconcilerStep)
    app.steps["worker"].add(WebhookStep)
    return app


def make_submitter(settings: Settings, app: Celery | None = None) -> Any:
    """The one submission path (``jobs.submit.Submitter``) wired to ``settings``: the database,
    the models file, the broker, and the storage (opened only when a manifest references it)."""
    from jobs.catalog import load_catalog
    from jobs.db import make_engine, session_factory
    from jobs.reuse import model_identity
    from jobs.submit import Submitter
    from storage import open_storage

    catalog = load_catalog(settings)
    return Submitter(
        sessions=session_factory(make_engine(settings.resolved_database_url())),
        publish=publisher(app or make_app(settings)), catalog=catalog,
        objects=lambda: open_storage(settings.resolved_storage_url(),
                                     endpoint_url=settings.s3_endpoint_url),
        unit_size=settings.unit_size, default_max_attempts=settings.max_attempts,
        aging_s=settings.priority_aging_seconds,
        identity=lambda model: model_identity(catalog, model, settings))


def publisher(app: Celery):  # type: ignore[no-untyped-def]
    """A function that publishes work units on ``app``'s broker over one connection."""

    def publish(units: Sequence[WorkUnit]) -> None:
        if not units:
            return
        with app.producer_or_acquire() as producer:
            for unit in units:
                app.send_task(RUN_UNIT, args=[unit.job_ids, unit.batch_key, unit.queue],
                              queue=unit.queue, priority=message_priority(app, unit.priority),
                              shadow=unit.title, producer=producer)

    return publish


def message_priority(app: Celery, priority: int) -> int:
    """A job priority (-1000..1000) as a message priority (0..9): 0 comes first on Redis,
    9 on RabbitMQ. The database orders jobs within a queue (any unit's message runs the best
    work of its queue); this orders a worker's queues, for a worker serving several models."""
    level = round((max(-1000, min(1000, priority)) + 1000) * 9 / 2000)
    url = str(app.conf.broker_url or "")
    return 9 - level if url.startswith(("redis", "rediss")) else level


class ReconcilerStep(bootsteps.StartStopStep):
    """Runs a reconciler pass periodically in the worker's main process."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.tref: Any = None
        self.pulse_tref: Any = None
        self.reconciler: Any = None

    def start(self, worker: Any) -> None:
        from jobs.catalog import load_catalog
        from workers.reconciler import Reconciler

        settings: Settings = worker.app.genfarm_settings
        self.name = worker.hostname
        self.models = worker.app.genfarm_models or list(load_catalog(settings).models)
        self.reconciler = Reconciler(settings, publisher(worker.app))
        self._announce()
        self.tref = worker.timer.call_repeatedly(settings.reconcile_interval, self._tick,
                                                 priority=10)
        self.pulse_tref = worker.timer.call_repeatedly(settings.pulse_seconds, self._recover,
                                                       priority=10)

    def _announce(self) -> None:
        from jobs.presence import announce

        assert self.reconciler is not None
        try:
            with self.reconciler.sessions.begin() as session:
                announce(session, self.name, self.models)
        except Exception:  # noqa: BLE001 - said again at the next pass
            log.warning("could not announce this worker's models", exc_info=True)

    def _tick(self) -> None:
        self._announce()
        try:
            assert self.reconciler is not None
            self.reconciler.run_if_due()  # one pass per interval for the whole farm
        except Exception:  # noqa: BLE001 - the next pass tries again
            log.warning("reconciler pass failed", exc_info=True)

    def _recover(self) -> None:
        try:
            assert self.reconciler is not None
            self.reconciler.recover_lost()
        except Exception:  # noqa: BLE001 - the next pass tries again
            log.warning("looking for lost units failed", exc_info=True)

    def stop(self, worker: Any) -> None:
        from jobs.presence import forget

        for tref in (self.tref, self.pulse_tref):
            if tref is not None:
                tref.cancel()
        self.tref = self.pulse_tref = None
        if self.reconciler is not None:
            try:
                with self.reconciler.sessions.begin() as session:
                    forget(session, self.name)
            except Exception:  # noqa: BLE001 - it goes stale and is ignored
                log.warning("could not remove this worker from the workers table", exc_info=True)
            self.reconciler.close()
            self.reconciler = None
