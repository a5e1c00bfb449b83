"""What every part of manifest parsing shares: its limits, the JobSpec a line expands to, and how
a message quotes a value; imports none of the parsing modules, so each of them can import it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAX_JOBS = 100_000
CHECK_JOBS = 1_000  # once a manifest has an error, each line is checked on this many more jobs
MAX_LINE_BYTES = 64 * 1024
MAX_PRIORITY = 1000
MAX_ATTEMPTS = 20
BATCH_REF_RE = re.compile(r"[0-9a-f]{6,32}")
MAX_INT_DIGITS = 30  # JSON integers longer than this are refused before Python parses them


@dataclass(slots=True)  # not frozen: a frozen __init__ costs 2 us a job, a fifth of expanding
class JobSpec:
    """A validated, expanded job, ready to insert (treated as immutable once made)."""

    kind: str
    params: dict[str, Any]
    batch_key: str
    queue: str
    priority: int
    max_attempts: int
    line: int
    # references to other jobs of the same manifest: (params path, position in the manifest)
    refs: tuple[tuple[str, int], ...] = ()
    # what the job waits for (``after``): lines of this manifest, and batches by id or prefix
    after: tuple[int, ...] = ()
    after_batches: tuple[str, ...] = ()


# a batch source {"batch": ID, "where": {...}} -> its succeeded jobs as [{"job": id}], or why not
BatchSources = Callable[[str, Any], "list[dict[str, Any]] | str"]


def short(value: Any, limit: int = 60) -> str:
    try:
        text = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short_key(key: str) -> str:
    return short(key)[1:-1] if len(key) > 40 or not key.isprintable() else key
