"""One manifest line: checked, sized before anything is made, then expanded into its jobs (its
sweeps' product, its count's seeds, one job per job of a line it edits)."""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from jobs.catalog import Catalog
from jobs.errors import LineError
from jobs.kinds import COMMON_FIELDS
from jobs.manifest_common import (
    BATCH_REF_RE,
    CHECK_JOBS,
    MAX_ATTEMPTS,
    MAX_INT_DIGITS,
    MAX_JOBS,
    MAX_PRIORITY,
    BatchSources,
    JobSpec,
    short,
    short_key,
)
from jobs.manifest_fields import (
    field_kinds,
    field_validators,
    find_nul,
    own_parts,
    path_parts,
    plain,
    ref_type,
    sweep_values,
)
from jobs.registry import (
    GeneratedRef,
    JobOutputRef,
    Params,
    has_refs,
    select_schema,
    storage_refs,
)

_UNSEEN: Any = object()  # a job not validated yet


@dataclass(slots=True)
class Seen:
    """What later lines (their line references) and the ``after`` check read of a line."""

    line: int
    kind: str
    model: str
    size: int
    first: int
    specs: list[JobSpec]
    errors: list[LineError]
    after: tuple[int, ...]


class Line:
    """One manifest line: checked, sized (before anything is expanded), then expanded."""

    __slots__ = ("after", "after_batches", "attempts", "axes", "bad_keys", "batches", "catalog",
                 "count", "earlier", "errors", "family", "first", "kind", "line", "model",
                 "priority", "refs", "schema", "size", "specs", "strict", "template")

    def __init__(self, line: int, record: Any, strict: bool, default_max_attempts: int,
                 catalog: Catalog, earlier: dict[int, Seen],
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

    def seen(self) -> Seen:
        return Seen(self.line, self.kind, self.model, self.size, self.first, self.specs,
                     self.errors, self.after)

    def _prepare(self, record: Any, default_max_attempts: int) -> None:
        if not isinstance(record, dict):
            self._error("", f"expected a JSON object, got {_type_name(record)}")
            return
        nul = find_nul(record)
        if nul is not None:
            self._error(nul, "contains a NUL character (\\u0000), which cannot be stored")
            return
        reg = self.catalog.registry
        kind = record.get("kind")
        if kind is None:
            self._error("kind", f"missing; expected one of {', '.join(reg.kinds)}")
            return
        if not isinstance(kind, str) or kind not in reg.kinds:
            self._error("kind", f"unknown kind {short(kind)}; expected one of {', '.join(reg.kinds)}")
            return
        self.kind = kind
        model = record["model"] if "model" in record else self.catalog.default_model(kind)
        if not isinstance(model, str):
            self._error("model", f"expected one model name, got {short(model)}")
            return
        if model not in self.catalog.models:
            known = ", ".join(self.catalog.serving(kind))
            self._error("model", f"unknown model {short(model)}; models for {kind} jobs: {known}")
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
        fields = field_kinds(schema)
        template: dict[str, Any] = {"model": model}
        for key, value in record.items():
            if key in COMMON_FIELDS or key == "model":
                continue
            if key not in fields:
                hint = difflib.get_close_matches(key, list(fields) + list(COMMON_FIELDS), n=1)
                also = (f"; did you mean {hint[0]!r}?" if hint
                        else f"; {kind} jobs of {family.name} take {', '.join(fields)}")
                self._error(short_key(key), "unknown field" + also)
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
            values = (sweep_values(value) if sweeps
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
                                     f"(6 to 32 letters and digits), got {short(item)}")
                return (), ()
        if self.line in lines:
            self._error("after", f"line {self.line} cannot wait for itself")
        return tuple(dict.fromkeys(lines)), tuple(dict.fromkeys(batches))

    def _int_field(self, record: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
        value = record.get(name, default)
        if not self.strict and isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value.strip()) if len(value.strip()) <= MAX_INT_DIGITS else value
        if not isinstance(value, int) or isinstance(value, bool):
            self._error(name, f"expected an integer, got {short(value)}")
            return default
        if not lo <= value <= hi:
            self._error(name, f"expected {lo} to {hi}, got {value}")
            return default
        return value

    def _line_refs(self, template: dict[str, Any]) -> list[tuple[str, Seen]]:
        """The {"line": N} references of this line: (params path, the line it names)."""
        assert self.schema is not None
        refs: list[tuple[str, Seen]] = []
        if not has_refs(self.schema):
            return refs
        for path, ref, ref_class in storage_refs(template, self.schema):
            if "line" not in ref:
                continue
            target_no = ref["line"]
            if set(ref) != {"line"}:
                continue  # the schema names what is wrong with it
            target = (self.earlier.get(target_no) if isinstance(target_no, int)
                      and not isinstance(target_no, bool) else None)
            if target is None:
                self._error(path, f"line {short(target_no)} is not an earlier job line of this "
                                  "manifest")
            elif target.errors:
                self._error(path, f"line {target_no} has errors")
            elif issubclass(ref_class, JobOutputRef):  # an output of that line: wait for it
                if target.kind != ref_class.of_kind or target.size != 1:
                    self._error(path, f"line {target_no} holds {target.size} {target.kind} "
                                      f"job(s); this takes the {ref_class.output} of one "
                                      f"{ref_class.of_kind} job")
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
        fields = field_validators(self.schema) if not self.refs and budget is None else None
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
        nested_attach = [(tuple(path_parts(p)), params) for p, _, params in nested]
        nested_refs = tuple((p, pos) for p, pos, _ in nested)
        fill_size = (source is not None and "width" in schema.model_fields
                     and ref_type(schema, "source") is GeneratedRef)
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
        is_plain = plain(schema)
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
                                     if is_plain else dump(model, mode="json", exclude_none=True))
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
                            own_parts(clean, parts)["params"] = source_params
                    append(JobSpec(kind, clean, batch_key(kind, clean), queue, priority,
                                   attempts, line, job_refs, after, after_batches))


    def _report(self, exc: ValidationError, seen: set[tuple[str, str]]) -> None:
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or ""
            msg = _pydantic_message(err)
            if field.split(".")[0] not in self.bad_keys and (field, msg) not in seen:
                seen.add((field, msg))
                self._error(field, msg)


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
    return f"{msg}, got {short(err.get('input'))}"


def _type_name(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number",
            bool: "a boolean", type(None): "null"}.get(type(value), type(value).__name__)
