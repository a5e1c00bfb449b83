"""Manifest parsing: JSONL or CSV lines, sweeps expanded, every line validated before anything is written.

A line is one job template. A scalar field given as a list sweeps over its
values, ``{"range": [start, stop]}`` or ``{"range": [start, stop, step]}``
sweeps a range (stop excluded), and ``count: N`` repeats the job with seeds
``seed, seed+1, ... seed+N-1``. Several sweeps on one line form their product.

A line's parameters come from the family of its model (``jobs.catalog``). The cost of
validation is bounded by what was sent: every job a manifest would make is counted (all lines,
lines after an error, and line references, which multiply) before it is made, and expansion
stops as soon as the total passes the limit.
"""

from __future__ import annotations

import csv
import difflib
import functools
import gc
import io
import itertools
import json
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import ConfigDict, TypeAdapter, ValidationError

from jobs.catalog import Catalog
from jobs.errors import LineError, ManifestError
from jobs.kinds import COMMON_FIELDS
from jobs.registry import (
    GeneratedRef,
    JobOutputRef,
    Params,
    SourceRef,
    has_refs,
    select_schema,
    storage_refs,
)

MAX_JOBS = 100_000
CHECK_JOBS = 1_000  # once a manifest has an error, each line is checked on this many more jobs
MAX_LINE_BYTES = 64 * 1024
MAX_PRIORITY = 1000
MAX_ATTEMPTS = 20
BATCH_REF_RE = re.compile(r"[0-9a-f]{6,32}")
MAX_INT_DIGITS = 30  # JSON integers longer than this are refused before Python parses them
_UNSEEN: Any = object()  # a job not validated yet


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
    records = _jsonl_records(data) if format == "jsonl" else _csv_records(data)
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
    lines: dict[int, _Seen] = {}
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
            parsed = _Line(line, record, strict, default_max_attempts, catalog, lines, batches)
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


def _check_after(lines: dict[int, _Seen]) -> list[LineError]:
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


# -- reading lines ------------------------------------------------------------------------------
def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"the key {_short(key)} appears twice in one object")
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


def _jsonl_records(text: str) -> Iterator[tuple[int, Any, bool]]:
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


def _csv_records(text: str) -> Iterator[tuple[int, Any, bool]]:
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


# -- one line -----------------------------------------------------------------------------------
@dataclass(slots=True)
class _Seen:
    """What later lines (their line references) and the ``after`` check read of a line."""

    line: int
    kind: str
    model: str
    size: int
    first: int
    specs: list[JobSpec]
    errors: list[LineError]
    after: tuple[int, ...]


class _Line:
    """One manifest line: checked, sized (before anything is expanded), then expanded."""

    __slots__ = ("after", "after_batches", "attempts", "axes", "bad_keys", "batches", "catalog",
                 "count", "earlier", "errors", "family", "first", "kind", "line", "model",
                 "priority", "refs", "schema", "size", "specs", "strict", "template")

    def __init__(self, line: int, record: Any, strict: bool, default_max_attempts: int,
                 catalog: Catalog, earlier: dict[int, _Seen],
                 batches: BatchSources | None = None) -> None:
        self.line, self.strict, self.catalog, self.earlier = line, strict, catalog, earlier
        self.batches = batches
        self.errors: list[LineError] = []
        self.size = 0  # the jobs this line would make, counted even when it has errors
        self.specs: list[JobSpec] = []
        self.first = 0  # position of this line's first job in the manifest
        self.schema: type[Params] | None = None
        self.model = ""
        self.kind = ""
        self.after: tuple[int, ...] = ()
        self.after_batches: tuple[str, ...] = ()
        self._prepare(record, default_max_attempts)

    def _error(self, field: str, message: str) -> None:
        self.errors.append(LineError(self.line, field, message))

    def seen(self) -> _Seen:
        return _Seen(self.line, self.kind, self.model, self.size, self.first, self.specs,
                     self.errors, self.after)

    def _prepare(self, record: Any, default_max_attempts: int) -> None:
        if not isinstance(record, dict):
            self._error("", f"expected a JSON object, got {_type_name(record)}")
            return
        nul = _find_nul(record)
        if nul is not None:
            self._error(nul, "contains a NUL character (\\u0000), which cannot be stored")
            return
        reg = self.catalog.registry
        kind = record.get("kind")
        if kind is None:
            self._error("kind", f"missing; expected one of {', '.join(reg.kinds)}")
            return
        if not isinstance(kind, str) or kind not in reg.kinds:
            self._error("kind", f"unknown kind {_short(kind)}; expected one of {', '.join(reg.kinds)}")
            return
        self.kind = kind
        model = record["model"] if "model" in record else self.catalog.default_model(kind)
        if not isinstance(model, str):
            self._error("model", f"expected one model name, got {_short(model)}")
            return
        if model not in self.catalog.models:
            known = ", ".join(self.catalog.serving(kind))
            self._error("model", f"unknown model {_short(model)}; models for {kind} jobs: {known}")
            return
        family = self.catalog.family(model)
        if kind not in family.kinds:
            self._error("model", f"model {model} ({family.name}) does not serve {kind} jobs; "
                                 f"models that do: {', '.join(self.catalog.serving(kind))}")
            return
        self.model, self.family = model, family
        schema = select_schema(family.kinds[kind], record)
        if isinstance(schema, str):
            field, _, message = schema.partition(": ")
            self._error(field, message)
            return
        self.schema = schema
        self.priority = self._int_field(record, "priority", 0, -MAX_PRIORITY, MAX_PRIORITY)
        self.attempts = self._int_field(record, "max_attempts", default_max_attempts, 1,
                                        MAX_ATTEMPTS)
        count = self._int_field(record, "count", 1, 1, MAX_JOBS)
        self.after, self.after_batches = self._after(record.get("after"))
        fields = _field_kinds(schema)
        template: dict[str, Any] = {"model": model}
        for key, value in record.items():
            if key in COMMON_FIELDS or key == "model":
                continue
            if key not in fields:
                hint = difflib.get_close_matches(key, list(fields) + list(COMMON_FIELDS), n=1)
                also = (f"; did you mean {hint[0]!r}?" if hint
                        else f"; {kind} jobs of {family.name} take {', '.join(fields)}")
                self._error(_short_key(key), "unknown field" + also)
                continue
            template[key] = value
        if count > 1 and "seed" not in fields:
            self._error("count", f"{kind} jobs of {family.name} have no seed to count from")
            count = 1
        seed = template.get("seed")
        if count > 1 and not self.strict and isinstance(seed, str) and seed.strip().isdigit():
            template["seed"] = int(seed.strip()) if len(seed.strip()) <= MAX_INT_DIGITS else seed
        if count > 1 and (not isinstance(template.get("seed"), int)
                          or isinstance(template.get("seed"), bool)):
            self._error("seed", "count needs one integer seed to count from")
            count = 1
        self.count = count
        self.axes: list[tuple[str, Sequence[Any]]] = []
        self.bad_keys: set[str] = set()
        for key, value in list(template.items()):
            sweeps, sources = fields[key]
            values = (_sweep_values(value) if sweeps
                      else self._sources(value) if sources else None)
            if isinstance(values, str):
                self._error(key, values)
                self.bad_keys.add(key)
                del template[key]
            elif values is not None:
                self.axes.append((key, values))
        self.template = template
        self.refs = self._line_refs(template)
        size = count
        for _, values in self.axes:
            size *= len(values)
        for path, target in self.refs:
            if path == "source":  # an edit of a line runs once per job of that line
                size *= target.size
        self.size = size

    def _sources(self, value: Any) -> list[Any] | str | None:
        """A source field's sweep: a list of sources, or a batch's succeeded jobs
        (``{"batch": ID, "where": {...}}``); None for one source."""
        if isinstance(value, dict) and "batch" in value:
            if set(value) - {"batch", "where"}:
                return 'a batch source takes {"batch": ID} and optionally "where": {...}'
            if self.batches is None:
                return "a batch source is expanded against the database: submit it"
            return self.batches(value["batch"], value.get("where"))
        if not isinstance(value, list):
            return None
        if not value:
            return "an empty list of sources sweeps over nothing"
        if not all(isinstance(v, dict) and "line" not in v and "batch" not in v for v in value):
            return ('a list of sources holds {"job": ID} and {"key": ...} objects (for every job '
                    'of a line give {"line": N} alone)')
        return value

    def _after(self, value: Any) -> tuple[tuple[int, ...], tuple[str, ...]]:
        """``after``: a line number or batch id, or a list of them; checked against the whole
        manifest once every line is read (a line may wait for a later one)."""
        if value is None:
            return (), ()
        items = value if isinstance(value, list) else [value]
        lines, batches = [], []
        for item in items:
            if isinstance(item, int) and not isinstance(item, bool):
                lines.append(item)
            elif isinstance(item, str) and BATCH_REF_RE.fullmatch(item):
                batches.append(item)
            else:
                self._error("after", "expected line numbers of this manifest or batch ids "
                                     f"(6 to 32 letters and digits), got {_short(item)}")
                return (), ()
        if self.line in lines:
            self._error("after", f"line {self.line} cannot wait for itself")
        return tuple(dict.fromkeys(lines)), tuple(dict.fromkeys(batches))

    def _int_field(self, record: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
        value = record.get(name, default)
        if not self.strict and isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value.strip()) if len(value.strip()) <= MAX_INT_DIGITS else value
        if not isinstance(value, int) or isinstance(value, bool):
            self._error(name, f"expected an integer, got {_short(value)}")
            return default
        if not lo <= value <= hi:
            self._error(name, f"expected {lo} to {hi}, got {value}")
            return default
        return value

    def _line_refs(self, template: dict[str, Any]) -> list[tuple[str, _Seen]]:
        """The {"line": N} references of this line: (params path, the line it names)."""
        assert self.schema is not None
        refs: list[tuple[str, _Seen]] = []
        if not has_refs(self.schema):
            return refs
        for path, ref, ref_type in storage_refs(template, self.schema):
            if "line" not in ref:
                continue
            target_no = ref["line"]
            if set(ref) != {"line"}:
                continue  # the schema names what is wrong with it
            target = (self.earlier.get(target_no) if isinstance(target_no, int)
                      and not isinstance(target_no, bool) else None)
            if target is None:
                self._error(path, f"line {_short(target_no)} is not an earlier job line of this "
                                  "manifest")
            elif target.errors:
                self._error(path, f"line {target_no} has errors")
            elif issubclass(ref_type, JobOutputRef):  # an output of that line: wait for it
                if target.kind != ref_type.of_kind or target.size != 1:
                    self._error(path, f"line {target_no} holds {target.size} {target.kind} "
                                      f"job(s); this takes the {ref_type.output} of one "
                                      f"{ref_type.of_kind} job")
                else:
                    refs.append((path, target))
                    self.after = tuple(dict.fromkeys((*self.after, target_no)))
            elif self.family.generated_kind is None:
                self._error(path, f"the {self.family.name} family does not recompute sources "
                                  "from a line: reference a succeeded job or a stored key")
            elif target.kind != self.family.generated_kind or target.model != self.model:
                self._error(path, f"line {target_no} holds {target.kind} jobs of model "
                                  f"{target.model}; a source line must hold "
                                  f"{self.family.generated_kind} jobs of model {self.model}")
            elif path != "source" and target.size != 1:
                self._error(path, f"line {target_no} expands to {target.size} jobs; this "
                                  "reference needs exactly one")
            else:
                refs.append((path, target))
        return refs

    def expand(self, first: int, checking: bool = False) -> list[JobSpec]:
        """The line's jobs (none if it has errors); validation errors are added to ``errors``.
        Once the manifest has an error (``checking``: an earlier line's; or this line's own,
        before or during expansion) nothing of it will be inserted: at most ``CHECK_JOBS``
        more jobs are validated, to name their mistakes at a bounded cost."""
        self.first = first
        if self.schema is None:
            return []
        specs: list[JobSpec] = []
        budget = CHECK_JOBS if checking or self.errors else None
        fields = _field_validators(self.schema) if not self.refs and budget is None else None
        if fields is None or not self._expand_by_field(specs, fields):
            self._expand(specs, budget)
        if self.errors:
            return []
        self.specs = specs
        return specs

    def _expand_by_field(self, specs: list[JobSpec], fields: dict[str, Callable[..., Any]]
                         ) -> bool:
        """Expand a line whose schema validates field by field (no field depends on another):
        its template once, each swept value once, and each job is the template with its values.
        False, with nothing made, where a value is refused: job by job then names the mistake."""
        assert self.schema is not None
        strict, count = self.strict, self.count
        keys = [key for key, _ in self.axes]
        if count > 1 and "seed" in keys:
            return False
        first = self.template | {key: values[0] for key, values in self.axes}
        try:
            template = self.schema.__pydantic_validator__.validate_python(first, strict=strict)
            if not keys and count == 1:  # one job (a line of a long manifest): no product
                clean = {k: v for k, v in template.__dict__.items() if v is not None}
                specs.append(JobSpec(self.kind, clean, self.family.batch_key(self.kind, clean),
                                     self.catalog.queue(self.kind, self.model), self.priority,
                                     self.attempts, self.line, (), self.after,
                                     self.after_batches))
                return True
            columns = [[fields[key](v, strict=strict) for v in values] for key, values in self.axes]
            if count > 1:
                seed = first["seed"]
                keys.append("seed")
                columns.append([fields["seed"](seed + i, strict=strict) for i in range(count)])
        except ValidationError:
            return False
        if any(v is None for column in columns for v in column):
            return False  # a swept null leaves its field out: job by job does that
        clean = {k: v for k, v in template.__dict__.items() if v is not None}
        kind, batch_key = self.kind, self.family.batch_key
        queue = self.catalog.queue(kind, self.model)
        priority, attempts, line, append = self.priority, self.attempts, self.line, specs.append
        after, after_batches = self.after, self.after_batches
        for combo in itertools.product(*columns):
            params = clean.copy()
            params.update(zip(keys, combo, strict=True))
            append(JobSpec(kind, params, batch_key(kind, params), queue, priority, attempts, line,
                           (), after, after_batches))
        return True

    def _expand(self, specs: list[JobSpec], budget: int | None) -> None:
        assert self.schema is not None
        schema, kind, template, count = self.schema, self.kind, self.template, self.count
        keys = [key for key, _ in self.axes]
        source = next((t for p, t in self.refs if p == "source"), None)
        nested = [(p, t.first, t.specs[0].params) for p, t in self.refs if p != "source"]
        nested_attach = [(tuple(_path_parts(p)), params) for p, _, params in nested]
        nested_refs = tuple((p, pos) for p, pos, _ in nested)
        fill_size = (source is not None and "width" in schema.model_fields
                     and _ref_type(schema, "source") is GeneratedRef)
        # what each source job adds to a job, worked out once, not once per combination:
        # (the size it gives, that size as a memo key, the params to attach, the job's refs)
        variants: list[tuple[dict[str, Any] | None, Any, list[tuple[tuple[Any, ...], Any]],
                             tuple[tuple[str, int], ...]]] = []
        if source is None:
            variants.append((None, None, nested_attach, nested_refs))
        for pos, src in enumerate(source.specs if source else [], start=source.first if source else 0):
            sp = src.params
            fill = {"width": sp["width"], "height": sp["height"]} if fill_size else None
            variants.append((fill, fill and (sp["width"], sp["height"]),
                             [(("source",), sp), *nested_attach], (("source", pos), *nested_refs)))
        queue, batch_key = self.catalog.queue(kind, self.model), self.family.batch_key
        strict, priority, attempts, line = self.strict, self.priority, self.attempts, self.line
        after, after_batches = self.after, self.after_batches
        # pydantic's own validator and serializer, without model_validate's and model_dump's
        # Python wrappers: the same work, a microsecond less for each of 100,000 jobs
        validate = schema.__pydantic_validator__.validate_python
        dump = schema.__pydantic_serializer__.to_python
        plain = _plain(schema)
        seen: set[tuple[str, str]] = set()
        append = specs.append
        for combo in itertools.product(*(values for _, values in self.axes)):
            base = template.copy()
            base.update(zip(keys, combo, strict=True))
            # the jobs of an edit of a line differ only in their source's params, which are
            # attached after validation: validated once for each size and seed they can take
            memo: dict[Any, dict[str, Any] | None] | None = {} if len(variants) > 1 else None
            for fill, size, attach, job_refs in variants:
                # a job's own fields win over the size it takes from its source
                params = {**fill, **base} if fill else base.copy() if count > 1 else base
                seed: Any = params.get("seed")
                for offset in range(count):
                    if budget is not None:
                        if not budget:
                            return
                        budget -= 1
                    if count > 1:
                        params["seed"] = seed + offset
                    clean = memo.get((size, offset), _UNSEEN) if memo is not None else _UNSEEN
                    if clean is _UNSEEN:
                        try:
                            model = validate(params, strict=strict)
                            clean = ({k: v for k, v in model.__dict__.items() if v is not None}
                                     if plain else dump(model, mode="json", exclude_none=True))
                        except ValidationError as exc:
                            self._report(exc, seen)
                            clean = None
                            if budget is None:
                                budget = CHECK_JOBS
                        if memo is not None:
                            memo[size, offset] = clean
                    if clean is None:
                        continue
                    if attach:  # recomputed from the source's own params
                        clean = dict(clean)  # memoized: shared by the jobs of other sources
                        for parts, source_params in attach:
                            _own_parts(clean, parts)["params"] = source_params
                    append(JobSpec(kind, clean, batch_key(kind, clean), queue, priority,
                                   attempts, line, job_refs, after, after_batches))


    def _report(self, exc: ValidationError, seen: set[tuple[str, str]]) -> None:
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or ""
            msg = _pydantic_message(err)
            if field.split(".")[0] not in self.bad_keys and (field, msg) not in seen:
                seen.add((field, msg))
                self._error(field, msg)


@functools.cache
def _field_kinds(schema: type[Params]) -> dict[str, tuple[bool, bool]]:
    """Each field of ``schema`` (in its order): whether it sweeps and whether it takes sources,
    worked out once per schema rather than on every line."""
    out = {}
    for name, info in schema.model_fields.items():
        ref = _ref_type(schema, name)
        out[name] = (_sweepable(info.annotation),
                     isinstance(ref, type) and issubclass(ref, SourceRef))
    return out


def _ref_type(schema: type[Params], field: str) -> Any:
    info = schema.model_fields.get(field)
    if info is None:
        return None
    args = [a for a in typing.get_args(info.annotation) if a is not type(None)]
    return args[0] if args else info.annotation


_NO_TEXT = (int, float, bool, type(None))


def _find_nul(value: Any, path: str = "") -> str | None:
    """The dotted path of the first string (key or value) holding a NUL character."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in str(key):
                return _short_key(f"{path}.{key}" if path else str(key))
            if type(item) in _NO_TEXT:
                continue
            found = _find_nul(item, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _find_nul(item, f"{path}.{i}")
            if found is not None:
                return found
    return None


def _sweepable(annotation: Any) -> bool:
    """Only plain scalar fields sweep; a list-valued field (seeds, ops) takes its list as is."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return True
    if args and typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return all(_sweepable(a) for a in args)
    return annotation in (int, float, str, bool)


def own_path(params: dict[str, Any], path: str) -> dict[str, Any]:
    """The node at a dotted path such as ``ops.2.color_transfer`` (list indexes are numbers),
    with every container on the way copied: jobs share the parts of their params they do not
    change."""
    return _own_parts(params, _path_parts(path))


def _path_parts(path: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in path.split(".")]


def _own_parts(params: dict[str, Any], parts: Iterable[Any]) -> dict[str, Any]:
    node: Any = params
    for key in parts:
        child = node[key]
        child = dict(child) if isinstance(child, dict) else list(child)
        node[key] = child
        node = child
    return node


@functools.cache
def _plain(schema: type[Params]) -> bool:
    """Whether a validated model's fields are already its JSON dump less its None fields: plain
    scalars, finite floats, nothing excluded or serialized by the schema's own code."""
    decorators = schema.__pydantic_decorators__
    if (decorators.field_serializers or decorators.model_serializers
            or decorators.computed_fields or schema.model_config.get("allow_inf_nan", True)):
        return False
    return all(_scalar(info.annotation) and not info.exclude
               for info in schema.model_fields.values())


@functools.cache
def _field_validators(schema: type[Params]) -> dict[str, Callable[..., Any]] | None:
    """Each field's own validator, for a schema whose jobs validate field by field: plain, with
    no validators or post-init of its own (nothing checks one field against another). None for
    any other schema: its jobs are validated whole."""
    decorators = schema.__pydantic_decorators__
    if (not _plain(schema) or decorators.validators or decorators.field_validators
            or decorators.root_validators or decorators.model_validators
            or schema.__pydantic_post_init__ is not None):
        return None
    config = ConfigDict(**schema.model_config)
    return {name: TypeAdapter(Annotated[info.annotation, info], config=config)  # type: ignore[arg-type]
            .validator.validate_python for name, info in schema.model_fields.items()}


def _scalar(annotation: Any) -> bool:
    if typing.get_origin(annotation) is typing.Literal:
        return all(type(v) in (str, int, bool) for v in typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return all(_scalar(a) for a in typing.get_args(annotation))
    return annotation in (int, float, str, bool, type(None))


class _FloatRange(Sequence[float]):
    """start, start + step, ... (n values), made one at a time: a sweep is sized before it is made."""

    def __init__(self, start: float, step: float, n: int) -> None:
        self.start, self.step, self.n = start, step, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[float]:
        start, step = self.start, self.step
        return (round(start + i * step, 10) for i in range(self.n))

    @typing.overload
    def __getitem__(self, i: int) -> float: ...
    @typing.overload
    def __getitem__(self, i: slice) -> Sequence[float]: ...
    def __getitem__(self, i: int | slice) -> float | Sequence[float]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return round(self.start + (i % self.n) * self.step, 10)


def _sweep_values(value: Any) -> Sequence[Any] | str | None:
    """The values a sweep stands for (lazily), None for a plain value, or an error message."""
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
        try:
            span = (stop - start) / step if step else 0.0
        except OverflowError:
            span = math.inf
        if step == 0 or span <= 0:
            return f"range {bounds} is empty"
        if not span <= MAX_JOBS:
            return f"range {bounds} has more than {MAX_JOBS} values"
        if all(isinstance(b, int) for b in (start, stop, step)):
            return range(start, stop, step)
        return _FloatRange(start, step, math.ceil(span - 1e-9))
    return None


def _pydantic_message(err: Any) -> str:
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if err["type"] == "missing":
        return "missing; this field is required"
    if err["type"] == "extra_forbidden":
        return "unknown field (genfarm fills it in itself)" if err["loc"][-1] in (
            "params", "sha256") else "unknown field"
    msg = msg[0].lower() + msg[1:] if msg else msg
    if not err.get("loc") or err["type"] == "value_error":  # about the whole line: no echo
        return msg
    return f"{msg}, got {_short(err.get('input'))}"


def _short(value: Any, limit: int = 60) -> str:
    try:
        text = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short_key(key: str) -> str:
    return _short(key)[1:-1] if len(key) > 40 or not key.isprintable() else key


def _type_name(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number",
            bool: "a boolean", type(None): "null"}.get(type(value), type(value).__name__)
