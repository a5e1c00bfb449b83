"""Bad input, fuzzed: random and mutated manifest lines always get a clear error or a valid
batch, never a crash; through the CLI, never a traceback and nothing written."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs.errors import ManifestError
from jobs.manifest import parse_manifest

VALID = {"kind": "generate", "seed": 7, "width": 64, "height": 64, "truncation": 0.5,
         "yaw": 10.0, "pitch": -5.0}
FIELDS = [*VALID, "count", "priority", "max_attempts", "model", "payload_bytes", "tag", "fail",
          "../../etc/passwd", "ñame", "", "seed\x00"]

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=3)
                      | st.fixed_dictionaries({"range": st.lists(inner, max_size=4)}), max_leaves=8)


@st.composite
def mutated_lines(draw: st.DrawFn) -> str:
    record = dict(VALID)
    for _ in range(draw(st.integers(1, 4))):
        key = draw(st.sampled_from(FIELDS))
        if draw(st.booleans()):
            record[key] = draw(values)
        else:
            record.pop(key, None)
    if draw(st.booleans()):
        record["kind"] = draw(st.sampled_from(["generate", "noop", "GENERATE", "edit", 3, None]))
    text = json.dumps(record, allow_nan=True)
    if draw(st.integers(0, 5)) == 0:  # cut or corrupt the JSON itself
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.text(max_size=5))
    return text


def check(text: str, fmt: str = "jsonl") -> None:
    try:
        specs = parse_manifest(text, format=fmt, source="fuzz.jsonl")
    except ManifestError as exc:
        assert exc.errors
        for err in exc.errors:
            assert err.line >= 1 and err.message and "Traceback" not in err.message
        exc.report()
        return
    for spec in specs:  # what passes is really valid
        assert spec.kind in ("generate", "noop") and spec.batch_key


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated_lines(), min_size=1, max_size=5))
def test_mutated_jsonl_lines(lines: list[str]) -> None:
    check("\n".join(lines))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_as_jsonl_and_csv(text: str) -> None:
    check(text)
    check(text, "csv")


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes(data: bytes) -> None:
    with contextlib.suppress(ManifestError):
        parse_manifest(data, source="fuzz")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(mutated_lines(), min_size=1, max_size=3))
def test_cli_never_shows_a_traceback_and_writes_nothing_on_error(tmp_path: Path, lines: list[str]) -> None:
    from cli.main import cli

    data = tmp_path / "data"
    runner = CliRunner()
    assert runner.invoke(cli, ["db", "upgrade", "--data-dir", str(data)]).exit_code == 0
    path = tmp_path / "fuzz.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
    before = runner.invoke(cli, ["status", "--json", "--data-dir", str(data)]).output
    result = runner.invoke(cli, ["submit", str(path), "--project", "fuzz", "--data-dir", str(data)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    if result.exit_code != 0:
        assert result.exit_code == 2 and "nothing was submitted" in result.output
        after = runner.invoke(cli, ["status", "--json", "--data-dir", str(data)]).output
        assert after == before
