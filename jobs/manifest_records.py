"""Reading a manifest's text into records: strict JSON per JSONL line, CSV rows with JSON cells,
each numbered by its line and refused whole (a LineError) where it cannot be read."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator
from typing import Any

from jobs.errors import LineError
from jobs.manifest_common import MAX_INT_DIGITS, MAX_LINE_BYTES, short


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"the key {short(key)} appears twice in one object")
            seen.add(key)
    return out


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits; at most "
                         f"{MAX_INT_DIGITS} are accepted")
    return int(text)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is too large for a 64-bit float")
    return value


# made once: json.loads with hooks makes a decoder per call (per line of a long manifest)
_decode = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_int=_bounded_int,
                           parse_float=_finite_float, parse_constant=_no_constant).decode


def loads(text: str) -> Any:
    """Strict JSON: no duplicate keys, no NaN or Infinity, no integers of absurd length."""
    if text.startswith("\ufeff"):
        return json.loads(text)  # refuses it, naming the byte order mark, as it always did
    return _decode(text)


def _json_error(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON: {exc.msg} at column {exc.colno}"
    if isinstance(exc, RecursionError):
        return "invalid JSON: nested too deeply"
    return f"invalid JSON: {exc}"


def jsonl_records(text: str) -> Iterator[tuple[int, Any, bool]]:
    # Lines end at \n only: U+2028, form feeds and other separators may sit inside JSON strings.
    for number, raw in enumerate(text.split("\n"), start=1):
        stripped = raw.strip()
        if not stripped:
            continue
        if len(raw.encode()) > MAX_LINE_BYTES:
            yield number, LineError(number, "", f"line longer than {MAX_LINE_BYTES} bytes"), True
            continue
        try:
            yield number, loads(stripped), True
        except (ValueError, RecursionError) as exc:
            yield number, LineError(number, "", _json_error(exc)), True


def csv_records(text: str) -> Iterator[tuple[int, Any, bool]]:
    reader = csv.reader(io.StringIO(text), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        yield 1, LineError(1, "", f"bad CSV header: {exc}"), False
        return
    header = [h.strip() for h in header]
    for col, name in enumerate(header, start=1):
        if not name:
            yield 1, LineError(1, "", f"column {col} of the header has no name"), False
            return
    if len(set(header)) != len(header):
        dup = sorted({h for h in header if header.count(h) > 1})
        yield 1, LineError(1, "", f"the header repeats column(s) {', '.join(dup)}"), False
        return
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            hint = " (a quote opened here is never closed)" if "end of data" in str(exc) else ""
            yield start, LineError(start, "", f"bad CSV: {exc}{hint}"), False
            return
        number = start
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            yield number, LineError(number, "", f"{len(row)} cells, the header has {len(header)}"), False
            continue
        try:
            yield number, {k: _csv_cell(v) for k, v in zip(header, row, strict=True) if v.strip()}, False
        except (ValueError, RecursionError) as exc:
            yield number, LineError(number, "", _json_error(exc)), False


def _csv_cell(cell: str) -> Any:
    """A CSV cell: JSON where it is a list, object or boolean, else text (numbers coerce later)."""
    text = cell.strip()
    if text[:1] in "[{" or text in ("true", "false"):
        try:
            return loads(text)
        except json.JSONDecodeError:
            return text
    return text
