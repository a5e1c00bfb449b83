"""Manifest parsing: JSONL or CSV lines, sweeps expanded, every line validated before anything is written.

A line is one job template. A scalar field given as a list sweeps over its
values, ``{"range": [start, stop]}`` or ``{"range": [start, stop, step]}``
sweeps a range (stop excluded), and ``count: N`` repeats the job with seeds
``seed, seed+1, ... seed+N-1``. Several sweeps on one line form their product.
"""

from __future__ import annotations

import copy
import csv
import difflib
import io
import itertools
import json
import math
import types
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from jobs.errors import LineError, ManifestError
from jobs.kinds import COMMON_FIELDS, KINDS

MAX_JOBS = 100_000
MAX_LINE_BYTES = 64 * 1024
MAX_PRIORITY = 1000
MAX_ATTEMPTS = 20


@dataclass(frozen=True)
class JobSpec:
    """A validated, expanded job, ready to insert."""

    kind: str
    params: dict[str, Any]
    batch_key: str
    queue: str
    priority: int
    max_attempts: int
    line: int
    # references to other jobs of the same manifest: (params path, position in the manifest)
    refs: tuple[tuple[str, int], ...] = ()


def parse_manifest(
    data: str | bytes, *, format: str = "jsonl", source: str = "manifest",
    default_max_attempts: int = 3,
) -> list[JobSpec]:
    """Parse and validate a whole manifest; raise ManifestError naming every bad line."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ManifestError([LineError(1, "", f"not UTF-8 text ({exc.reason})")], source) from exc
    if format not in ("jsonl", "csv"):
        raise ManifestError([LineError(1, "", f"unknown format {format!r}; use jsonl or csv")], source)
    records = _jsonl_records(data) if format == "jsonl" else _csv_records(data)
    return validate_records(records, source=source, default_max_attempts=default_max_attempts)


def format_for(path: str) -> str:
    """Pick the manifest format from a file name."""
    return "csv" if path.lower().endswith(".csv") else "jsonl"


def validate_records(
    records: Iterable[tuple[int, Any, bool]], *, source: str = "manifest",
    default_max_attempts: int = 3,
) -> list[JobSpec]:
    """Validate (line, record, strict) triples; strict=False lets CSV text coerce to numbers."""
    errors: list[LineError] = []
    specs: list[JobSpec] = []
    by_line: dict[int, list[tuple[int, JobSpec]]] = {}
    for line, record, strict in records:
        if isinstance(record, LineError):
            errors.append(record)
            continue
        line_specs, line_errors = _expand_line(line, record, strict, default_max_attempts, by_line)
        errors.extend(line_errors)
        by_line[line] = [(len(specs) + i, spec) for i, spec in enumerate(line_specs)]
        if not errors:
            specs.extend(line_specs)
        if len(specs) > MAX_JOBS:
            errors.append(LineError(line, "", f"the manifest expands to more than {MAX_JOBS} jobs"))
            break
    if not errors and not specs:
        errors.append(LineError(1, "", "the manifest has no jobs"))
    if errors:
        raise ManifestError(errors, source)
    return specs


def _jsonl_records(text: str) -> Iterator[tuple[int, Any, bool]]:
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped:
            continue
        if len(raw.encode()) > MAX_LINE_BYTES:
            yield number, LineError(number, "", f"line longer than {MAX_LINE_BYTES} bytes"), True
            continue
        try:
            yield number, json.loads(stripped), True
        except json.JSONDecodeError as exc:
            yield number, LineError(number, "", f"invalid JSON: {exc.msg} at column {exc.colno}"), True
        except RecursionError:
            yield number, LineError(number, "", "invalid JSON: nested too deeply"), True


def _csv_records(text: str) -> Iterator[tuple[int, Any, bool]]:
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except (StopIteration, csv.Error):
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
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield reader.line_num, LineError(reader.line_num, "", f"bad CSV: {exc}"), False
            return
        number = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            yield number, LineError(number, "", f"{len(row)} cells, the header has {len(header)}"), False
            continue
        yield number, {k: _csv_cell(v) for k, v in zip(header, row, strict=True) if v.strip()}, False


def _csv_cell(cell: str) -> Any:
    """A CSV cell: JSON where it parses as a list, object, number or boolean, else text."""
    text = cell.strip()
    if text[:1] in "[{" or text in ("true", "false"):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


def _sweepable(annotation: Any) -> bool:
    """Only plain scalar fields sweep; a list-valued field (seeds, ops) takes its list as is."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return True
    if args and typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return all(_sweepable(a) for a in args)
    return annotation in (int, float, str, bool)


def _line_refs(line: int, record: dict[str, Any], by_line: dict[int, list[tuple[int, JobSpec]]],
               errors: list[LineError]) -> list[tuple[str, list[tuple[int, JobSpec]]]]:
    """The {"line": N} references of a record: (params path, the jobs of line N)."""
    found: list[tuple[str, Any]] = []
    if isinstance(record.get("source"), dict):
        found.append(("source", record["source"]))
    for i, op in enumerate(record.get("ops") or [] if isinstance(record.get("ops"), list) else []):
        if isinstance(op, dict) and isinstance(op.get("color_transfer"), dict):
            found.append((f"ops.{i}.color_transfer", op["color_transfer"]))
    refs = []
    for path, ref in found:
        if "line" not in ref:
            continue
        if set(ref) != {"line"}:
            errors.append(LineError(line, path, "give exactly one of line, job or key"))
            continue
        target = ref["line"]
        jobs = by_line.get(target) if isinstance(target, int) and not isinstance(target, bool) else None
        if jobs is None:
            errors.append(LineError(line, path, f"line {target!r} is not an earlier job line of "
                                                "this manifest"))
        elif not jobs:
            errors.append(LineError(line, path, f"line {target} has errors"))
        elif any(spec.kind != "generate" for _, spec in jobs):
            errors.append(LineError(line, path, f"line {target} holds {jobs[0][1].kind} jobs; "
                                                "a source line must hold generate jobs"))
        elif path != "source" and len(jobs) != 1:
            errors.append(LineError(line, path, f"line {target} expands to {len(jobs)} jobs; "
                                                "this reference needs exactly one"))
        else:
            refs.append((path, jobs))
    return refs


def _set_path(params: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node: Any = params
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[last] = value


def _expand_line(
    line: int, record: Any, strict: bool, default_max_attempts: int,
    by_line: dict[int, list[tuple[int, JobSpec]]],
) -> tuple[list[JobSpec], list[LineError]]:
    if not isinstance(record, dict):
        return [], [LineError(line, "", f"expected a JSON object, got {_type_name(record)}")]
    kind_name = record.get("kind")
    if kind_name is None:
        return [], [LineError(line, "kind", f"missing; expected one of {', '.join(KINDS)}")]
    if not isinstance(kind_name, str) or kind_name not in KINDS:
        return [], [LineError(line, "kind", f"unknown kind {_short(kind_name)}; expected one of {', '.join(KINDS)}")]
    kind = KINDS[kind_name]
    schema = kind.schema_for(record)
    if isinstance(schema, str):
        field, _, message = schema.partition(": ")
        return [], [LineError(line, field, message)]
    errors: list[LineError] = []

    priority = _int_field(record, "priority", 0, -MAX_PRIORITY, MAX_PRIORITY, line, errors)
    attempts = _int_field(record, "max_attempts", default_max_attempts, 1, MAX_ATTEMPTS, line, errors)
    count = _int_field(record, "count", 1, 1, MAX_JOBS, line, errors)

    fields = schema.model_fields
    template: dict[str, Any] = {}
    for key, value in record.items():
        if key in COMMON_FIELDS:
            continue
        if key not in fields:
            hint = difflib.get_close_matches(key, list(fields) + list(COMMON_FIELDS), n=1)
            also = f"; did you mean {hint[0]!r}?" if hint else f"; {kind_name} takes {', '.join(fields)}"
            errors.append(LineError(line, _short_key(key), "unknown field" + also))
            continue
        template[key] = value
    if count > 1 and "seed" not in fields:
        errors.append(LineError(line, "count", f"{kind_name} jobs have no seed to count from"))
        count = 1

    axes: list[tuple[str, list[Any]]] = []
    bad_keys: set[str] = set()
    for key, value in list(template.items()):
        values = _sweep_values(value) if _sweepable(fields[key].annotation) else None
        if isinstance(values, str):
            errors.append(LineError(line, key, values))
            bad_keys.add(key)
            del template[key]
        elif values is not None:
            axes.append((key, values))
    size = count
    for _, values in axes:
        size *= len(values)
    if size > MAX_JOBS:
        return [], [LineError(line, "", f"this line expands to {size} jobs; the limit is {MAX_JOBS}")]

    refs = _line_refs(line, template, by_line, errors)
    # the jobs of a {"line": N} source: the edit runs once per job of that line
    source_axis: list[tuple[int, JobSpec] | None] = list(
        next((jobs for path, jobs in refs if path == "source"), [None]))
    nested = [(path, jobs[0]) for path, jobs in refs if path != "source"]

    specs: list[JobSpec] = []
    seen: set[tuple[str, str]] = set()
    for combo, source in itertools.product(
            itertools.product(*(values for _, values in axes)), source_axis):
        base = copy.deepcopy(template)
        base.update({key: v for (key, _), v in zip(axes, combo, strict=True)})
        job_refs: list[tuple[str, int]] = []
        for path, (pos, spec) in ([("source", source)] if source else []) + nested:
            _set_path(base, path, {"line": get_path(record, path)["line"], "params": spec.params})
            job_refs.append((path, pos))
        if source and kind_name == "edit" and base.get("op") != "image":
            base.setdefault("width", source[1].params["width"])
            base.setdefault("height", source[1].params["height"])
        for offset in range(count):
            params = dict(base)
            if count > 1:
                seed = params.get("seed")
                if not isinstance(seed, int) or isinstance(seed, bool):
                    errors.append(LineError(line, "seed", "count needs an integer seed to count from"))
                    return [], _dedupe(errors)
                params["seed"] = seed + offset
            try:
                model = schema.model_validate(params, strict=strict)
            except ValidationError as exc:
                for err in exc.errors():
                    field = ".".join(str(p) for p in err["loc"]) or ""
                    msg = _pydantic_message(err)
                    if field in bad_keys:
                        continue
                    if (field, msg) not in seen:
                        seen.add((field, msg))
                        errors.append(LineError(line, field, msg))
                continue
            clean = model.model_dump(mode="json", exclude_none=True)
            specs.append(JobSpec(kind_name, clean, kind.batch_key(clean), kind.queue,
                                 priority, attempts, line, tuple(job_refs)))
    return (specs, []) if not errors else ([], _dedupe(errors))


def get_path(params: Any, path: str) -> Any:
    """The node at a dotted path such as ``ops.2.color_transfer`` (list indexes are numbers)."""
    for part in path.split("."):
        params = params[int(part)] if part.isdigit() else params[part]
    return params


def _sweep_values(value: Any) -> list[Any] | str | None:
    """The values a sweep stands for, None for a plain value, or an error message."""
    if isinstance(value, list):
        if not value:
            return "an empty list sweeps over nothing"
        if any(isinstance(v, (list, dict)) for v in value):
            return "a sweep list holds plain values only"
        return value
    if isinstance(value, dict):
        if set(value) != {"range"}:
            return 'expected a plain value, a list to sweep, or {"range": [start, stop, step]}'
        bounds = value["range"]
        if (not isinstance(bounds, list) or len(bounds) not in (2, 3)
                or not all(isinstance(b, (int, float)) and not isinstance(b, bool)
                           and math.isfinite(b) for b in bounds)):
            return "range takes [start, stop] or [start, stop, step] finite numbers"
        start, stop = bounds[0], bounds[1]
        step = bounds[2] if len(bounds) == 3 else 1
        if step == 0 or (stop - start) / step <= 0:
            return f"range {bounds} is empty"
        span = (stop - start) / step
        if not span < MAX_JOBS:
            return f"range {bounds} has more than {MAX_JOBS} values"
        n = math.ceil(span - 1e-9)
        if all(isinstance(b, int) for b in (start, stop, step)):
            return list(range(start, stop, step))
        return [round(start + i * step, 10) for i in range(n)]
    return None


def _int_field(record: dict[str, Any], name: str, default: int, lo: int, hi: int,
               line: int, errors: list[LineError]) -> int:
    value = record.get(name, default)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        errors.append(LineError(line, name, f"expected an integer, got {_short(value)}"))
        return default
    if not lo <= value <= hi:
        errors.append(LineError(line, name, f"expected {lo} to {hi}, got {value}"))
        return default
    return value


def _pydantic_message(err: Any) -> str:
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if err["type"] == "missing":
        return "missing; this field is required"
    if err["type"] == "extra_forbidden":
        return "unknown field"
    msg = msg[0].lower() + msg[1:] if msg else msg
    if not err.get("loc") or err["type"] == "value_error":  # about the whole line: no echo
        return msg
    return f"{msg}, got {_short(err.get('input'))}"


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=True) if not isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short_key(key: str) -> str:
    return _short(key)[1:-1] if len(key) > 40 or not key.isprintable() else key


def _type_name(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number",
            bool: "a boolean", type(None): "null"}.get(type(value), type(value).__name__)


def _dedupe(errors: list[LineError]) -> list[LineError]:
    return list(dict.fromkeys(errors))
