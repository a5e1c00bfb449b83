"""The S3 backend against a real S3 HTTP endpoint (moto's server in its own process)."""

import hashlib
import json
import urllib.request

import pytest

from storage import open_storage
from storage.errors import ChecksumMismatch, ObjectNotFound, StorageError
from storage.provenance import s3_metadata


def test_put_get_metadata_listing_and_presigned_url(s3_bucket: str) -> None:
    store = open_storage(f"s3://{s3_bucket}/renders")
    key = store.job_key("acme", "b1", "j1", "image.png")
    assert key == "renders/acme/b1/j1/image.png"
    prov = {"kind": "generate", "seed": 4, "params": {"seed": 4}}
    stored = store.put(key, b"png-bytes", "image/png", s3_metadata(prov))
    assert stored.sha256 == hashlib.sha256(b"png-bytes").hexdigest()
    assert store.get(key, sha256=stored.sha256) == b"png-bytes"
    assert store.read_head(key, 3) == b"png" and store.read_head(key, 99) == b"png-bytes"
    head = store.head(key)  # type: ignore[attr-defined]
    assert head["ContentType"] == "image/png"
    assert head["Metadata"]["sha256"] == stored.sha256
    assert json.loads(head["Metadata"]["genfarm-provenance"]) == prov
    assert list(store.list("renders/acme/")) == [key]
    with urllib.request.urlopen(store.presigned_url(key), timeout=10) as resp:
        assert resp.read() == b"png-bytes"
    with pytest.raises(ChecksumMismatch):
        store.get(key, sha256="0" * 64)
    with pytest.raises(ObjectNotFound):
        store.get("renders/acme/b1/j1/none.png")
    with pytest.raises(ObjectNotFound):
        store.read_head("renders/acme/b1/j1/none.png", 12)
    assert not store.exists("renders/acme/b1/j1/none.png") and store.exists(key)
    store.check()


def test_a_missing_bucket_is_a_storage_error(s3_bucket: str) -> None:
    store = open_storage(f"s3://{s3_bucket}-absent/x")
    with pytest.raises(StorageError):
        store.check()
    with pytest.raises(StorageError):
        store.put("x/a", b"1", "text/plain")
