"""The line checks' helpers: what a schema's fields take, worked out once per schema (sweeps,
sources, field-by-field validation), the values a sweep stands for, and dotted paths into params."""

from __future__ import annotations

import functools
import math
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Annotated, Any

from pydantic import ConfigDict, TypeAdapter

from jobs.manifest_common import MAX_JOBS, short_key
from jobs.registry import Params, SourceRef


@functools.cache
def field_kinds(schema: type[Params]) -> dict[str, tuple[bool, bool]]:
    """Each field of ``schema`` (in its order): whether it sweeps and whether it takes sources,
    worked out once per schema rather than on every line."""
    out = {}
    for name, info in schema.model_fields.items():
        ref = ref_type(schema, name)
        out[name] = (_sweepable(info.annotation),
                     isinstance(ref, type) and issubclass(ref, SourceRef))
    return out


def ref_type(schema: type[Params], field: str) -> Any:
    info = schema.model_fields.get(field)
    if info is None:
        return None
    args = [a for a in typing.get_args(info.annotation) if a is not type(None)]
    return args[0] if args else info.annotation


_NO_TEXT = (int, float, bool, type(None))


def find_nul(value: Any, path: str = "") -> str | None:
    """The dotted path of the first string (key or value) holding a NUL character."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in str(key):
                return short_key(f"{path}.{key}" if path else str(key))
            if type(item) in _NO_TEXT:
                continue
            found = find_nul(item, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = find_nul(item, f"{path}.{i}")
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
    return own_parts(params, path_parts(path))


def path_parts(path: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in path.split(".")]


def own_parts(params: dict[str, Any], parts: Iterable[Any]) -> dict[str, Any]:
    node: Any = params
    for key in parts:
        child = node[key]
        child = dict(child) if isinstance(child, dict) else list(child)
        node[key] = child
        node = child
    return node


@functools.cache
def plain(schema: type[Params]) -> bool:
    """Whether a validated model's fields are already its JSON dump less its None fields: plain
    scalars, finite floats, nothing excluded or serialized by the schema's own code."""
    decorators = schema.__pydantic_decorators__
    if (decorators.field_serializers or decorators.model_serializers
            or decorators.computed_fields or schema.model_config.get("allow_inf_nan", True)):
        return False
    return all(_scalar(info.annotation) and not info.exclude
               for info in schema.model_fields.values())


@functools.cache
def field_validators(schema: type[Params]) -> dict[str, Callable[..., Any]] | None:
    """Each field's own validator, for a schema whose jobs validate field by field: plain, with
    no validators or post-init of its own (nothing checks one field against another). None for
    any other schema: its jobs are validated whole."""
    decorators = schema.__pydantic_decorators__
    if (not plain(schema) or decorators.validators or decorators.field_validators
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


def sweep_values(value: Any) -> Sequence[Any] | str | None:
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
