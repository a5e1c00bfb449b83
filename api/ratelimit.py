"""A token bucket per key (an API token's digest, or a client address for requests without a
valid token)."""

from __future__ import annotations

import math
import threading
import time

MAX_KEYS = 100_000  # buckets kept before full ones are dropped (a full bucket is the default)


class RateLimiter:
    """``per_minute`` requests a minute per key, in bursts of up to ``burst``."""

    def __init__(self, per_minute: float, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = burst
        self.buckets: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()
        self.prune_at = MAX_KEYS

    def _level(self, key: str, now: float) -> float:
        tokens, last = self.buckets.get(key, (float(self.burst), now))
        return min(self.burst, tokens + (now - last) * self.rate)

    def take(self, key: str) -> float:
        """0 if allowed now (and counted), else the seconds to wait."""
        now = time.monotonic()
        with self.lock:
            tokens = self._level(key, now)
            if tokens >= 1:
                self.buckets[key] = (tokens - 1, now)
                if len(self.buckets) > self.prune_at:
                    self._prune(now)
                return 0.0
            self.buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate

    def wait(self, key: str) -> float:
        """The seconds until ``key`` may make a request, without counting one."""
        with self.lock:
            tokens = self._level(key, time.monotonic())
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        # many distinct clients: forget those whose bucket has refilled (nothing is lost)
        for key in [k for k in self.buckets if self._level(k, now) >= self.burst]:
            del self.buckets[key]
        self.prune_at = max(MAX_KEYS, 2 * len(self.buckets))  # amortized: never on every request


def retry_after(wait: float) -> str:
    """A Retry-After value: whole seconds, at least 1."""
    return str(max(1, math.ceil(wait)))
