"""Batch names, labels and webhook URLs are checked before anything is written; `pull --name`
paths stay inside the destination whatever a param holds."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cli.io import Refused
from cli.pull import _safe_path, named_paths
from jobs.labels import BatchMeta, InvalidMeta, check_webhook_url, parse_labels


def test_labels_parse_and_refuse_with_the_field_named() -> None:
    assert parse_labels(["shot=010", "artist = mia", "v=3=final"]) == {
        "shot": "010", "artist": "mia", "v": "3=final"}
    for bad, field in [(["shot"], "labels"), (["Shot=1"], "labels.Shot"), (["=1"], "labels."),
                       (["a=1", "a=2"], "labels"), (["k=" + "x" * 256], "labels.k"),
                       (["k=a\x00b"], "labels.k"), (["k/x=1"], "labels.k/x")]:
        with pytest.raises(InvalidMeta) as caught:
            parse_labels(bad)
        assert caught.value.field == field, bad
    with pytest.raises(InvalidMeta, match="at most 32"):
        BatchMeta(labels={f"k{i}": "v" for i in range(33)}).checked()
    with pytest.raises(InvalidMeta, match="control"):
        BatchMeta(name="a\nb").checked()
    assert BatchMeta(name="  sh010  ", labels={"take": 3}).checked() == BatchMeta(
        "sh010", {"take": "3"})


@pytest.mark.parametrize("url", ["ftp://host/x", "file:///etc/passwd", "http://", "//host/x",
                                 "http://user:pw@host/x", "http://host:port/x", "http://h/a b",
                                 "http://h/\u00e9", "javascript:alert(1)", "http://h/" + "a" * 2048,
                                 ""])
def test_a_webhook_url_must_be_plain_http(url: str) -> None:
    with pytest.raises(InvalidMeta):
        check_webhook_url(url)


def test_webhook_urls_that_work() -> None:
    for url in ["http://127.0.0.1:8080/hook", "https://hooks.example.com/genfarm?x=1"]:
        assert check_webhook_url(url) == url


@given(st.text(max_size=300))
def test_a_named_path_never_leaves_the_destination(text: str) -> None:
    path = _safe_path(text)
    dest = Path("/dest")
    resolved = (dest / path).resolve()
    assert resolved.is_relative_to(dest) and resolved != dest
    assert not path.is_absolute() and all(
        p not in ("", ".", "..") and not p.startswith(".") and len(p) <= 100 for p in path.parts)


def _out(name: str) -> SimpleNamespace:
    return SimpleNamespace(name=name)


def _job(**params: object) -> SimpleNamespace:
    return SimpleNamespace(params=params, kind="generate", model="aether")


def test_names_from_params_with_folders_formats_and_extensions() -> None:
    jobs = {"a": _job(seed=7, yaw=-30.0, prompt="../../etc/passwd"),
            "b": _job(seed=7, yaw=30.0, prompt="a cat"), "c": _job(seed=8, yaw=0.0, prompt="x")}
    outputs = [("a", 0, _out("image.png")), ("b", 1, _out("image.png")),
               ("c", 2, _out("video.mp4")), ("c", 2, _out("frame0.png"))]
    paths = named_paths("{prompt}/{seed:04d}_{yaw}", "batch", outputs, jobs)
    assert [str(p) for p in paths] == ["_/_/etc/passwd/0007_-30.0.png", "a_cat/0007_30.0.png",
                                       "x/0008_0.0_video.mp4", "x/0008_0.0_frame0.png"]
    assert [str(p) for p in named_paths("{index}.{ext}", "b", outputs[:2], jobs)] == [
        "0.png", "1.png"]


@pytest.mark.parametrize("template, message", [
    ("{seed}", "gives '7.png' to jobs #0 and #1"), ("{missing}", "has no 'missing'"),
    ("{seed", "literal braces"), ("{}", "is not a field"), ("{0}", "is not a field"),
    ("{seed:Z}", "job #0"), ("{seed!x}", "conversion"), ("{seed.real}", "is not a field")])
def test_a_template_that_cannot_name_every_file_apart_is_refused(template: str,
                                                                 message: str) -> None:
    jobs = {"a": _job(seed=7), "b": _job(seed=7)}
    outputs = [("a", 0, _out("image.png")), ("b", 1, _out("image.png"))]
    with pytest.raises(Refused, match=message.replace("(", r"\(").replace(".", r"\.")):
        named_paths(template, "batch", outputs, jobs)
