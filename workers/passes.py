"""Pass sizes that fit: the forward-pass size that makes the most jobs a second, per batch key,
device and dtype, found by measuring real passes and shared with every worker through the
database. A CPU device is named with its threads (``cpu:1-thread``): a process of one thread
and one of eight have different best passes.

A key nobody has measured yet is probed on its own jobs: passes of 1, 2, 4, ... up to the
worker's largest (``--max-batch``), twice each and at least 8 jobs' worth, steady passes only
(not a process's first pass of a key, nor one after the worker sat idle). The best rate wins
and is written to ``pass_sizes``; other workers read it at their first pass of the key. Real
passes keep it up to date: now and then one pass runs at a neighbour size (double, then half),
and the best of the recent rates is kept. Out of memory still caps a key below whatever was
measured (the runner's ``fits``).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from jobs.models import PassSize, utcnow
from workers.limits import reraise_time_limit

log = logging.getLogger("genfarm.passes")

SAMPLES = 2  # steady passes per size while probing ...
PROBE_JOBS = 8  # ... and at least this many jobs: one pass of 1 is a few ms, easily unlucky
RECENT = 8  # rates kept per size afterwards
REPROBE_EVERY = 40  # passes at the best size between two passes at a neighbour size
REREAD_S = 600.0  # how long a size read from the database is trusted before it is read again


def probe_sizes(largest: int) -> list[int]:
    """1, 2, 4, ... and ``largest`` itself."""
    sizes, n = [], 1
    while n < largest:
        sizes.append(n)
        n *= 2
    return [*sizes, largest]


@dataclass
class _Key:
    rates: dict[int, deque[float]] = field(default_factory=dict)  # size -> jobs/s of passes
    best: int | None = None
    read_at: float = 0.0
    since_probe: int = 0
    turn: int = -1  # which neighbour the next check of a drift tries
    warmed: bool = False  # a process's first pass of a key pays one-time costs: not a guide

    def rate(self, size: int) -> float:
        got = self.rates.get(size)
        return max(got) if got else 0.0


def _probed(k: _Key, size: int) -> bool:
    """Whether probing has measured enough passes of ``size``."""
    return len(k.rates.get(size, ())) >= max(SAMPLES, -(-PROBE_JOBS // size))


class PassSizes:
    """What size the next pass of a key should be, and what a pass of that size achieved."""

    def __init__(self, sessions: sessionmaker[Session], device: str, dtype: str) -> None:
        self.sessions, self.device, self.dtype = sessions, device, dtype
        self.keys: dict[str, _Key] = {}

    def _name(self, batch_key: str) -> str:
        return f"{batch_key}|{self.device}|{self.dtype}"[:320]

    def size(self, batch_key: str, largest: int) -> int:
        """The next pass's size for ``batch_key``, at most ``largest``."""
        k = self._key(batch_key)
        if k.best is None:
            return self._next_probe(k, largest)
        if k.since_probe >= REPROBE_EVERY:  # a neighbour, now and then: rates drift
            k.since_probe = 0
            # double and half in turn: a size on either side can take over
            near = [o for o in (k.best * 2, k.best // 2) if 1 <= o <= largest]
            if near:
                k.turn += 1
                return near[k.turn % len(near)]
        return min(k.best, largest)

    def settled(self, batch_key: str, size: int) -> bool:
        """Whether a pass of ``size`` is what ``batch_key`` runs at now (not a probe of another
        size): only such passes tell what the next jobs of that key will cost."""
        best = self._key(batch_key).best
        return best is not None and size == best

    def observe(self, batch_key: str, size: int, seconds: float, largest: int) -> None:
        """A steady pass of ``size`` jobs took ``seconds`` (the forward pass and what the
        family does with it); the best size is chosen and shared once every size was tried."""
        if size < 1 or seconds <= 0:
            return
        k = self._key(batch_key)
        if not k.warmed:
            k.warmed = True
            return
        k.rates.setdefault(size, deque(maxlen=RECENT)).append(size / seconds)
        if k.best is not None:
            k.since_probe += 1
            best = max(k.rates, key=k.rate)
            if best != k.best and k.rate(best) > 1.05 * k.rate(k.best):
                log.info("passes of %s: %d jobs make %.1f/s, %d made %.1f/s: now %d", batch_key,
                         best, k.rate(best), k.best, k.rate(k.best), best)
                k.best = best
                self._store(batch_key, k)
            return
        if all(_probed(k, s) for s in probe_sizes(largest)):
            k.best = max(probe_sizes(largest), key=k.rate)
            log.info("passes of %s on %s (%s): %s jobs/s by size; %d chosen", batch_key,
                     self.device, self.dtype,
                     {s: round(k.rate(s), 1) for s in sorted(k.rates)}, k.best)
            self._store(batch_key, k)

    def _next_probe(self, k: _Key, largest: int) -> int:
        for s in probe_sizes(largest):
            if not _probed(k, s):
                return s
        return largest

    def _key(self, batch_key: str) -> _Key:
        k = self.keys.setdefault(batch_key, _Key())
        now = time.monotonic()
        if (k.best is None or now - k.read_at > REREAD_S) and now - k.read_at > 1.0:
            k.read_at = now  # at most once a second while nobody has measured it
            try:
                with self.sessions() as session:
                    row = session.get(PassSize, self._name(batch_key))
            except Exception as exc:  # noqa: BLE001 - measured here instead
                reraise_time_limit(exc)
                log.warning("could not read the pass size of %s", batch_key, exc_info=True)
                row = None
            if row is not None:
                k.best = row.best
        return k

    def _store(self, batch_key: str, k: _Key) -> None:
        assert k.best is not None
        rates: dict[str, Any] = {str(s): round(k.rate(s), 3) for s in sorted(k.rates)}
        try:
            with self.sessions.begin() as session:
                session.merge(PassSize(key=self._name(batch_key), best=k.best, rates=rates,
                                       updated_at=utcnow()))
        except Exception as exc:  # noqa: BLE001 - kept here; another worker measures its own
            reraise_time_limit(exc)
            log.warning("could not store the pass size of %s", batch_key, exc_info=True)
