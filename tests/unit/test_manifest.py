import json

import pytest

from jobs.errors import ManifestError
from jobs.manifest import MAX_JOBS, parse_manifest


def jsonl(*records: object) -> str:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in records)


def test_defaults_are_filled_and_batch_key_names_the_shape() -> None:
    [spec] = parse_manifest(jsonl({"kind": "generate", "seed": 7}))
    assert spec.params == {"seed": 7, "width": 128, "height": 128, "truncation": 0.7,
                           "yaw": 0.0, "pitch": 0.0, "radius": 2.7, "fov": 30.0,
                           "save_latent": False, "model": "aether"}
    assert spec.batch_key == "generate:aether:128x128"
    assert (spec.priority, spec.max_attempts, spec.line) == (0, 3, 1)


def test_sweeps_ranges_and_count_expand_to_their_product() -> None:
    specs = parse_manifest(jsonl(
        {"kind": "generate", "seed": [1, 2, 3], "yaw": {"range": [-30, 31, 30]}},
        {"kind": "generate", "seed": 100, "count": 4, "truncation": [0.5, 1.0]},
    ))
    first = [(s.params["seed"], s.params["yaw"]) for s in specs if s.line == 1]
    assert first == [(seed, yaw) for seed in (1, 2, 3) for yaw in (-30, 0, 30)]
    second = sorted((s.params["seed"], s.params["truncation"]) for s in specs if s.line == 2)
    assert second == sorted((seed, t) for t in (0.5, 1.0) for seed in range(100, 104))


def test_float_range_and_blank_lines() -> None:
    specs = parse_manifest("\n\n" + jsonl({"kind": "generate", "seed": 1,
                                           "truncation": {"range": [0.5, 0.8, 0.1]}}) + "\n\n")
    assert [s.params["truncation"] for s in specs] == [0.5, 0.6, 0.7]
    assert specs[0].line == 3


def test_csv_with_typed_cells_and_json_lists() -> None:
    text = 'kind,seed,width,height,yaw\ngenerate,1,64,64,\ngenerate,"[2,3]",64,64,45\n'
    specs = parse_manifest(text, format="csv")
    assert [(s.params["seed"], s.params["yaw"], s.line) for s in specs] == [
        (1, 0.0, 2), (2, 45.0, 3), (3, 45.0, 3)]


def test_every_bad_line_is_named_with_its_field() -> None:
    text = jsonl(
        {"kind": "generate", "seed": 1},  # fine
        {"kind": "generate", "seed": "seven"},  # wrong type
        "{not json",  # bad JSON
        {"kind": "paint", "seed": 1},  # unknown kind
        {"kind": "generate"},  # missing field
        {"kind": "generate", "seed": 1, "width": 5000, "sed": 3},  # out of range + unknown field
        [1, 2],  # not an object
        {"kind": "generate", "seed": -1, "truncation": 2},  # two fields out of range
    )
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, source="jobs.jsonl")
    errors = info.value.errors
    named = {(e.line, e.field) for e in errors}
    assert {(2, "seed"), (3, ""), (4, "kind"), (5, "seed"), (6, "width"), (6, "sed"), (7, ""),
            (8, "seed"), (8, "truncation")} <= named
    assert 1 not in {e.line for e in errors}
    report = info.value.report()
    assert "jobs.jsonl:6: sed: unknown field; did you mean 'seed'?" in report
    assert "jobs.jsonl:6: width: input should be less than or equal to 1024, got 5000" in report
    assert "jobs.jsonl:4: kind: unknown kind \"paint\"" in report


def test_strict_types_in_jsonl_but_text_numbers_in_csv() -> None:
    with pytest.raises(ManifestError):
        parse_manifest(jsonl({"kind": "generate", "seed": "7"}))
    assert parse_manifest("kind,seed\ngenerate,7\n", format="csv")[0].params["seed"] == 7


def test_limits_and_bad_sweeps() -> None:
    with pytest.raises(ManifestError, match="1 error"):
        parse_manifest(jsonl({"kind": "generate", "seed": {"range": [0, MAX_JOBS + 1]}}))
    with pytest.raises(ManifestError) as info:
        parse_manifest(jsonl({"kind": "generate", "seed": []},
                             {"kind": "generate", "seed": {"range": [5, 1]}},
                             {"kind": "generate", "seed": {"from": 1}},
                             {"kind": "generate", "seed": 1, "count": 0},
                             {"kind": "noop", "count": 3}))
    assert [e.line for e in info.value.errors] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("bounds", ["[0, 10, 1e-300]", "[true, 3]", "[0]", "\"0..9\""])
def test_ranges_that_cannot_expand_are_errors(bounds: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(f'{{"kind": "generate", "seed": {{"range": {bounds}}}}}')
    assert [e.field for e in info.value.errors] == ["seed"]


@pytest.mark.parametrize("bounds", ["[0, Infinity]", "[0, NaN]", "[0, 1e400]", "[0, -Infinity]"])
def test_numbers_json_does_not_have_are_refused_when_read(bounds: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(f'{{"kind": "generate", "seed": {{"range": {bounds}}}}}')
    (error,) = info.value.errors
    assert error.line == 1 and "invalid JSON" in error.message and "number" in error.message


def test_empty_manifest_and_bad_encoding() -> None:
    with pytest.raises(ManifestError, match="1 error"):
        parse_manifest("\n\n")
    with pytest.raises(ManifestError) as info:
        parse_manifest(b"\xff\xfe\x00garbage")
    assert "UTF-8" in info.value.errors[0].message


def test_csv_shape_errors() -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest("kind,seed\ngenerate,1,extra\ngenerate\n", format="csv")
    assert [e.line for e in info.value.errors] == [2, 3]
