"""The unit's time limit (Celery's soft limit: an exception raised in the worker's main thread
wherever it is) is the unit's, never mistaken for a fault of what it interrupted."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from workers.runner import Runtime


@pytest.fixture
def limit_in() -> Iterator[Any]:
    """``limit_in(seconds)``: the unit's time limit, raised that long from now in the main
    thread, as Celery's pool raises it (a signal's handler; SIGUSR2 here, leaving SIGALRM to
    pytest-timeout); ``limit_in(0)`` calls it off."""
    def limit(*_: Any) -> None:
        raise SoftTimeLimitExceeded()

    timers: list[threading.Timer] = []

    def arm(seconds: float) -> None:
        for timer in timers:
            timer.cancel()
        timers.clear()
        if seconds > 0:
            timers.append(threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGUSR2)))
            timers[0].start()

    previous = signal.signal(signal.SIGUSR2, limit)
    try:
        yield arm
    finally:
        arm(0)
        signal.signal(signal.SIGUSR2, previous)


def slow_setup(runtime: Runtime, tmp_path: Path) -> Runtime:
    """A runtime whose model's setup takes a while: most of it reading and hashing a large
    checkpoint (which is no checkpoint: set up to the end, it fails with the library's error)."""
    runtime.family("aether")  # torch and its kin imported (an import is no place for it)
    big = tmp_path / "big.safetensors"
    big.write_bytes(bytes(256 << 20))
    return Runtime(runtime.settings.model_copy(update={"checkpoint": str(big),
                                                       "model_profile": "tiny"}))


def test_a_time_limit_during_a_models_setup_is_no_fault_of_the_model(
        runtime: Runtime, limit_in: Any, tmp_path: Path) -> None:
    """A model that failed to set up is not tried again for a minute (its jobs go back). The
    time limit arriving during its setup is no such failure: the next unit sets it up."""
    slow = slow_setup(runtime, tmp_path)
    try:
        for delay in (0.05, 0.02, 0.1):
            # a limit landing in a finalizer would be lost (Python reports it as unraisable),
            # and the setup would end in the checkpoint's error: then another moment
            limit_in(delay)
            try:
                slow.family("aether")
            except SoftTimeLimitExceeded:
                break
            except Exception:  # noqa: BLE001 - not a checkpoint: the limit came after the setup
                slow.broken.clear()
            finally:
                limit_in(0)
        else:
            pytest.fail("the time limit never interrupted the model's setup")
        assert "aether" not in slow.broken
        with pytest.raises(Exception, match="header"):  # noqa: PT011 - the library's own error
            slow.family("aether")  # set up again at once: here, to its own error (not a
        assert "aether" in slow.broken  # checkpoint), which is the model's
    finally:
        slow.close()


def test_a_time_limit_during_setup_before_the_claim_times_the_units_jobs_out(
        runtime: Runtime, limit_in: Any, tmp_path: Path) -> None:
    """A unit sets its model up before it claims. Its time limit arriving there still ends its
    jobs' attempts (each is claimed and timed out, to retry), so a model too slow to set up
    fails its jobs in the end instead of holding them queued for ever."""
    import json

    from sqlalchemy import select

    from jobs.manifest import parse_manifest
    from jobs.models import Job
    from jobs.submit import WorkUnit, submit

    slow = slow_setup(runtime, tmp_path)
    try:
        for _ in range(3):
            units: list[WorkUnit] = []
            submit(slow.sessions, "acme", parse_manifest(json.dumps(
                {"kind": "generate", "seed": {"range": [0, 3]}, "width": 32, "height": 32})),
                units.extend, unit_size=64)
            limit_in(0.05)
            try:
                slow.run_unit(units[0].job_ids, units[0].queue)
            finally:
                limit_in(0)
            if "aether" not in slow.broken:  # the limit landed in the setup, as meant
                break
            slow.broken.clear()  # it came after: the checkpoint's own error; again
        else:
            pytest.fail("the time limit never landed in the model's setup")
        with slow.sessions() as s:
            jobs = s.execute(select(Job.status, Job.attempt, Job.error).where(
                Job.id.in_(units[0].job_ids))).all()
        assert [tuple(j) for j in jobs] == [("queued", 1, "unit time limit exceeded")] * 3
    finally:
        slow.close()
