"""Manifest parsing: JSONL or CSV lines, sweeps expanded, every line validated before anything is written.

A line is one job template. A scalar field given as a list sweeps over its
values, ``{"range": [start, stop]}`` or ``{"range": [start, stop, step]}``
sweeps a range (stop excluded), and ``count: N`` repeats the job with seeds
``seed, seed+1, ... seed+N-1``. Several sweeps on one line form their product.

A line's parameters come from the family of its model (``jobs.catalog``). The cost of
validation is bounded by what was sent: every job a manifest would make is counted (all lines,
lines after an error, and line references, which multiply) before it is made, and expansion
stops as soon as the total passes the limit.

Here are the entry points; ``jobs.manifest_records`` reads the text into records,
``jobs.manifest_expand`` checks and expands one line (with ``jobs.manifest_fields``), and
``jobs.manifest_common`` holds the limits and JobSpec, still importable from here.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable
from typing import Any

from jobs.catalog import Catalog
from jobs.errors import LineError, ManifestError
from jobs.manifest_common import BATCH_REF_RE as BATCH_REF_RE
from jobs.manifest_common import CHECK_JOBS as CHECK_JOBS
from jobs.manifest_common import MAX_ATTEMPTS as MAX_ATTEMPTS
from jobs.manifest_common import MAX_INT_DIGITS as MAX_INT_DIGITS
from jobs.manifest_common import MAX_JOBS, BatchSources, JobSpec
from jobs.manifest_common import MAX_LINE_BYTES as MAX_LINE_BYTES
from jobs.manifest_common import MAX_PRIORITY as MAX_PRIORITY
from jobs.manifest_expand import Line, Seen
from jobs.manifest_fields import own_path as own_path
from jobs.manifest_records import csv_records, jsonl_records
from jobs.manifest_records import loads as loads


def parse_manifest(
    data: str | bytes, *, format: str = "jsonl", source: str = "manifest",
    default_max_attempts: int = 3, catalog: Catalog | None = None,
    batches: BatchSources | None = None,
) -> list[JobSpec]:
    """Parse and validate a whole manifest; raise ManifestError naming every bad line."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ManifestError([LineError(1, "", f"not UTF-8 text ({exc.reason})")], source) from exc
    if format not in ("jsonl", "csv"):
        raise ManifestError([LineError(1, "", f"unknown format {format!r}; use jsonl or csv")], source)
    records = jsonl_records(data) if format == "jsonl" else csv_records(data)
    return validate_records(records, source=source, default_max_attempts=default_max_attempts,
                            catalog=catalog, batches=batches)


def format_for(path: str) -> str:
    """Pick the manifest format from a file name."""
    return "csv" if path.lower().endswith(".csv") else "jsonl"


def default_catalog() -> Catalog:
    from jobs.catalog import load_catalog
    from jobs.settings import Settings

    return load_catalog(Settings(_env_file=None))


def validate_records(
    records: Iterable[tuple[int, Any, bool]], *, source: str = "manifest",
    default_max_attempts: int = 3, catalog: Catalog | None = None,
    batches: BatchSources | None = None,
) -> list[JobSpec]:
    """Validate (line, record, strict) triples; strict=False lets CSV text coerce to numbers.
    ``batches`` expands batch sources (submission has the database; plain parsing does not)."""
    catalog = catalog or default_catalog()
    errors: list[LineError] = []
    specs: list[JobSpec] = []
    lines: dict[int, Seen] = {}
    total = 0
    # up to 100,000 jobs' dicts are made here and all of them live on: the cycle collector would
    # walk them again and again (a fifth of the time) and find nothing to free
    collecting = gc.isenabled()
    gc.disable()
    try:
        for line, record, strict in records:
            if isinstance(record, LineError):
                errors.append(record)
                continue
            parsed = Line(line, record, strict, default_max_attempts, catalog, lines, batches)
            total += parsed.size
            if total > MAX_JOBS:
                lines[line] = parsed.seen()
                errors.append(LineError(line, "", f"the manifest would make at least {total} jobs "
                                                  f"(up to this line); the limit is {MAX_JOBS}"))
                break
            line_specs = parsed.expand(len(specs), checking=bool(errors))
            lines[line] = parsed.seen()  # the rest of the line is freed: 100,000 lines add up
            errors.extend(parsed.errors)
            if not errors:
                specs.extend(line_specs)
        errors.extend(_check_after(lines))
    finally:
        if collecting:
            gc.enable()
    if not errors and not specs:
        errors.append(LineError(1, "", "the manifest has no jobs"))
    if errors:
        raise ManifestError(list(dict.fromkeys(errors)), source)
    return specs


def _check_after(lines: dict[int, Seen]) -> list[LineError]:
    """Every line an ``after`` names is a job line without errors, and no line waits on
    itself through others (a cycle: named on each of its lines)."""
    errors: list[LineError] = []
    if not any(parsed.after for parsed in lines.values()):
        return errors
    for parsed in lines.values():
        for target in parsed.after:
            if target == parsed.line:
                continue  # said already
            other = lines.get(target)
            if other is None:
                errors.append(LineError(parsed.line, "after", f"line {target} is not a job "
                                                              "line of this manifest"))
            elif other.errors:
                errors.append(LineError(parsed.line, "after", f"line {target} has errors"))
    graph = {n: [t for t in p.after if t in lines and t != n] for n, p in lines.items()}
    state: dict[int, int] = {}  # 1: on the path being walked, 2: done
    for start in graph:
        stack = [(start, iter(graph[start]))]
        state[start] = state.get(start) or 1
        if state[start] == 2:
            continue
        path = [start]
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                cycle = path[path.index(child):]
                for n in cycle:
                    errors.append(LineError(n, "after", "waits for itself through lines "
                                            + " -> ".join(map(str, [*cycle, child]))))
                state[child] = 2
            elif state.get(child) is None:
                state[child] = 1
                stack.append((child, iter(graph[child])))
                path.append(child)
    return errors
