"""Expansion makes exactly what validating each job on its own would: a sweep's values are
validated once each and an edit of a line is validated once for all its sources, so these tests
hold the result against each job validated whole by its schema (the oracle), for sweeps that
mix valid and refused values, counts, CSV text and schemas whose fields are checked together."""

from __future__ import annotations

import csv
import io
import itertools
import json
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import Field, ValidationInfo, field_validator, model_validator

from jobs.catalog import Catalog
from jobs.errors import ManifestError
from jobs.families.aether import Generate, LatentEdit
from jobs.manifest import default_catalog, parse_manifest
from jobs.registry import FamilySpec, ModelEntry, Params, Registry

AXES: dict[str, st.SearchStrategy[Any]] = {
    # valid values mostly, some that a field refuses (negative seed, side not a multiple of 8)
    "seed": st.integers(-2, 2**32),
    "yaw": st.floats(-200, 200, allow_nan=False).map(lambda v: round(v, 3)),
    "width": st.sampled_from([16, 64, 128, 100, 2048]),
    "truncation": st.sampled_from([0.0, 0.5, 1.0, 1.5]),
    "save_latent": st.booleans(),
}


def whole(schema: type[Params], params: dict[str, Any], strict: bool = True) -> dict[str, Any]:
    """The oracle: one job validated and dumped whole, as the schema says."""
    return schema.model_validate(params, strict=strict).model_dump(mode="json", exclude_none=True)


@st.composite
def generate_lines(draw: st.DrawFn) -> tuple[dict[str, Any], list[tuple[str, list[Any]]], int]:
    swept = draw(st.lists(st.sampled_from(sorted(AXES)), unique=True, max_size=3))
    axes = [(key, draw(st.lists(AXES[key], min_size=1, max_size=4))) for key in swept]
    fixed = {key: draw(AXES[key]) for key in draw(st.lists(st.sampled_from(sorted(AXES)),
                                                           unique=True, max_size=2))
             if key not in swept}
    fixed.setdefault("seed", 3) if "seed" not in swept else None
    count = 1 if "seed" in swept or not isinstance(fixed.get("seed"), int) else draw(
        st.integers(1, 4))
    return fixed, axes, count


def expected_jobs(fixed: dict[str, Any], axes: list[tuple[str, list[Any]]], count: int,
                  strict: bool = True) -> list[dict[str, Any]] | None:
    """Every job of the line validated whole, in manifest order; None if any is refused."""
    out = []
    for combo in itertools.product(*(values for _, values in axes)):
        for offset in range(count):
            params = {"model": "aether", **fixed, **dict(zip([k for k, _ in axes], combo, strict=True))}
            if count > 1:
                params["seed"] += offset
            try:
                out.append(whole(Generate, params, strict))
            except ValueError:
                return None
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(generate_lines())
def test_a_swept_line_makes_what_validating_each_job_would(
        line: tuple[dict[str, Any], list[tuple[str, list[Any]]], int]) -> None:
    fixed, axes, count = line
    record = {"kind": "generate", **fixed, **dict(axes)}
    if count > 1:
        record["count"] = count
    want = expected_jobs(fixed, axes, count)
    if want is None:
        with pytest.raises(ManifestError):
            parse_manifest(json.dumps(record))
        return
    specs = parse_manifest(json.dumps(record))
    assert [s.params for s in specs] == want
    assert [list(s.params) for s in specs] == [list(w) for w in want]  # the same order, too
    assert [s.batch_key for s in specs] == [f"generate:aether:{w['width']}x{w['height']}"
                                            for w in want]


@settings(max_examples=30, deadline=None)
@given(generate_lines())
def test_csv_cells_sweep_like_json(line: tuple[dict[str, Any], list[tuple[str, list[Any]]],
                                                int]) -> None:
    """CSV text coerces to numbers (not strict): swept cells as JSON lists, plain ones as text."""
    fixed, axes, count = line
    row = {"kind": "generate", **{k: str(v).lower() if isinstance(v, bool) else str(v)
                                  for k, v in fixed.items()},
           **{k: json.dumps(v) for k, v in axes}}
    if count > 1:
        row["count"] = str(count)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(row))
    writer.writeheader()
    writer.writerow(row)
    text_fixed = {k: (v if isinstance(v, bool) else str(v)) for k, v in fixed.items()}
    if count > 1:
        text_fixed["seed"] = fixed["seed"]  # a counted seed is read as an integer first
    want = expected_jobs(text_fixed, axes, count, strict=False)
    if want is None:
        with pytest.raises(ManifestError):
            parse_manifest(buf.getvalue(), format="csv")
        return
    assert [s.params for s in parse_manifest(buf.getvalue(), format="csv")] == want


def test_an_edit_of_a_line_is_each_source_job_edited() -> None:
    lines = [{"kind": "generate", "seed": [5, 6], "width": [64, 128]},
             {"kind": "edit", "op": "latent", "source": {"line": 1}, "strength": [1.0, -2.5],
              "direction": 2}]
    specs = parse_manifest("\n".join(json.dumps(r) for r in lines))
    sources = [s for s in specs if s.line == 1]
    edits = [s for s in specs if s.line == 2]
    want = []
    for strength in (1.0, -2.5):  # each swept combination, then each source job
        for pos, src in enumerate(sources):
            size = {"width": src.params["width"], "height": src.params["height"]}
            params = whole(LatentEdit, {"model": "aether", "op": "latent", "direction": 2,
                                        "source": {"line": 1}, "strength": strength, **size})
            params["source"] = {**params["source"], "params": src.params}
            want.append((params, (("source", pos),)))
    assert [(e.params, e.refs) for e in edits] == want
    # each edit owns its source node: attaching one job's source params touched no other's
    assert len({id(e.params["source"]) for e in edits}) == len(edits)
    assert [e.params["source"]["params"]["seed"] for e in edits] == [5, 5, 6, 6] * 2


def test_an_edit_refused_for_one_value_names_it_once_for_every_source() -> None:
    text = "\n".join(json.dumps(r) for r in [
        {"kind": "generate", "seed": {"range": [0, 500]}},
        {"kind": "edit", "op": "latent", "source": {"line": 1}, "strength": [1.0, 99.0]}])
    with pytest.raises(ManifestError) as info:
        parse_manifest(text)
    [error] = info.value.errors
    assert (error.line, error.field) == (2, "strength")
    assert "less than or equal to 20" in error.message


# -- a studio's own schema, whose fields are checked together -------------------------------
class Window(Params):
    """Two fields that only make sense together: start must come before stop."""

    model: str
    start: int = Field(0, ge=0)
    stop: int = Field(10, ge=0)
    mode: Literal["a", "b"] = "a"

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        if self.start >= self.stop:
            raise ValueError(f"start ({self.start}) must come before stop ({self.stop})")
        return self


class Scaled(Params):
    """A field validator that reads another field."""

    model: str
    scale: int = Field(1, ge=1)
    size: int = 64

    @field_validator("size")
    @classmethod
    def _fits(cls, size: int, info: ValidationInfo) -> int:
        if size * info.data.get("scale", 1) > 256:
            raise ValueError(f"size {size} times scale {info.data.get('scale')} is over 256")
        return size


def studio_catalog() -> Catalog:
    base = default_catalog().registry
    family = FamilySpec(name="studio", summary="a studio's schemas", worker="x:Y", weights="none",
                        kinds={"generate": Window, "noop": Scaled})
    reg = Registry(base.kinds, {"studio": family})
    return Catalog(reg, {"win": ModelEntry("win", "studio")})


@pytest.mark.parametrize(("record", "field", "message"), [
    ({"kind": "generate", "start": [0, 5, 12], "stop": [11, 20]}, "",
     "start (12) must come before stop (11)"),
    ({"kind": "generate", "start": {"range": [0, 1000]}, "stop": 900}, "",
     "start (900) must come before stop (900)"),
    ({"kind": "noop", "scale": [1, 2, 4, 8], "size": [16, 64]}, "size",
     "size 64 times scale 8 is over 256"),
])
def test_fields_checked_together_are_checked_for_every_combination(
        record: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(json.dumps({"model": "win", **record}), catalog=studio_catalog())
    first = info.value.errors[0]
    assert (first.line, first.field, first.message.split(", got")[0]) == (1, field, message)


def test_fields_checked_together_pass_where_every_combination_does() -> None:
    specs = parse_manifest(json.dumps({"kind": "generate", "model": "win", "start": [0, 5],
                                       "stop": [6, 9], "mode": ["a", "b"]}),
                           catalog=studio_catalog())
    assert [(s.params["start"], s.params["stop"], s.params["mode"]) for s in specs] == [
        (a, b, m) for a in (0, 5) for b in (6, 9) for m in ("a", "b")]


@pytest.mark.parametrize("cell", ["inf", "-inf", "nan", "1e999"])
def test_a_csv_number_that_is_not_finite_is_refused(cell: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(f"kind,seed,yaw\ngenerate,1,{cell}\n", format="csv")
    assert info.value.errors[0].field == "yaw"
