"""CPU-heavy work off the event loop, without stop-the-world pauses for everyone else."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from fastapi.concurrency import run_in_threadpool

T = TypeVar("T")

MAX_PAUSE_S = 30.0  # back-to-back submissions still let a collection through this often

_lock = threading.Lock()
_running = 0
_was_enabled = False
_paused_since = 0.0


async def off_loop(fn: Callable[..., T], *args: object) -> T:
    """Run ``fn(*args)`` in a worker thread with the cyclic garbage collector paused meanwhile.

    A thread frees the event loop, not the GIL: while a big manifest allocates millions of
    objects, each full collection walks them all and stops every thread (measured: pauses of
    150 to 450 ms, which health checks and polls then wait out). Reference counting still frees
    nearly everything; what cycles pile up meanwhile are collected once the last one is done.
    """
    return await run_in_threadpool(_without_gc, fn, *args)


def _without_gc(fn: Callable[..., T], *args: object) -> T:
    global _running, _was_enabled, _paused_since
    with _lock:
        if _running == 0:
            _was_enabled = gc.isenabled()
            _paused_since = time.monotonic()
            gc.disable()
        elif _was_enabled and time.monotonic() - _paused_since > MAX_PAUSE_S:
            gc.collect()  # overlapping submissions: garbage cycles must not pile up for ever
            _paused_since = time.monotonic()
        _running += 1
    try:
        return fn(*args)
    finally:
        with _lock:
            _running -= 1
            if _running == 0 and _was_enabled:
                gc.enable()
