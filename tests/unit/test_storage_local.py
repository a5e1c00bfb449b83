import hashlib
from pathlib import Path

import pytest

from storage import open_storage
from storage.errors import BadKey, ChecksumMismatch, ObjectNotFound
from storage.keys import job_key, sanitize_name
from storage.provenance import encode_png, read_png_provenance


def test_key_layout_is_deterministic() -> None:
    assert job_key("renders", "acme", "b1", "j1", "image.png") == "renders/acme/b1/j1/image.png"
    assert job_key("", "acme", "b1", "j1", "image.png") == "acme/b1/j1/image.png"


@pytest.mark.parametrize("part", ["..", "../x", "a/b", "", ".hidden", "x" * 200, "a b", "é"])
def test_unsafe_key_parts_are_refused(part: str) -> None:
    with pytest.raises(BadKey):
        job_key("", "acme", part, "j", "image.png")


def test_sanitize_user_file_names() -> None:
    assert sanitize_name("../../etc/passwd") == "etc_passwd"
    assert sanitize_name("my render (final).png") == "my_render_final_.png"
    assert sanitize_name("///") == "output"


def test_local_put_get_checksum_and_listing(tmp_path: Path) -> None:
    store = open_storage((tmp_path / "out").as_uri())
    key = store.job_key("acme", "b1", "j1", "image.png")
    stored = store.put(key, b"hello", "image/png")
    assert stored.sha256 == hashlib.sha256(b"hello").hexdigest() and stored.bytes == 5
    assert store.get(key, sha256=stored.sha256) == b"hello"
    with pytest.raises(ChecksumMismatch):
        store.get(key, sha256="0" * 64)
    store.put(key, b"again", "image/png")  # a rerun overwrites the same object
    assert store.get(key) == b"again"
    assert store.read_head(key, 3) == b"aga" and store.read_head(key, 99) == b"again"
    big = hashlib.sha256(b"x").digest() * 200_000  # 6.4 MB: more than one write may take
    store.put(key, big, "image/png")
    assert store.get(key) == big
    store.put(key, b"ok", "image/png")  # a shorter object leaves nothing of the longer one
    assert store.get(key) == b"ok" and (tmp_path / "out" / key).stat().st_size == 2
    assert list(store.list("acme/")) == ["acme/b1/j1/image.png"]
    assert not list((tmp_path / "out" / "acme" / "b1" / "j1").glob(".tmp-*"))
    with pytest.raises(ObjectNotFound):
        store.get("acme/b1/j1/missing.png")
    with pytest.raises(ObjectNotFound):
        store.read_head("acme/b1/j1/missing.png", 12)
    with pytest.raises(BadKey):
        store.put("../escape", b"x", "text/plain")


def test_png_carries_provenance() -> None:
    prov = {"kind": "generate", "seed": 3, "params": {"seed": 3, "note": "ünïcode"}}
    png = encode_png(bytes(range(48)) * 4, 8, 8, prov)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert read_png_provenance(png) == prov
