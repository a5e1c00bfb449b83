"""The storage interface: public logic here, each backend writes only the small private part."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

from storage import keys
from storage.errors import ChecksumMismatch


@dataclass(frozen=True)
class StoredObject:
    key: str
    sha256: str
    bytes: int
    content_type: str


class Storage:
    """An object store holding genfarm's outputs under one prefix."""

    url: str = ""
    prefix: str = ""

    # -- public API -------------------------------------------------------------------------
    def put(self, key: str, data: bytes, content_type: str,
            metadata: dict[str, str] | None = None) -> StoredObject:
        """Store ``data`` at ``key`` (overwriting: keys are deterministic, a rerun replaces)."""
        digest = hashlib.sha256(data).hexdigest()
        meta = dict(metadata or {})
        meta["sha256"] = digest
        self._put(key, data, content_type, meta)
        return StoredObject(key, digest, len(data), content_type)

    def get(self, key: str, sha256: str | None = None) -> bytes:
        """The object's bytes; with ``sha256``, checked against it."""
        data = self._get(key)
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise ChecksumMismatch(f"{key}: sha256 does not match the recorded {sha256}")
        return data

    def read_head(self, key: str, size: int) -> bytes:
        """The object's first ``size`` bytes (fewer if it is shorter), without reading the rest:
        enough to tell what a file is, at a cost bounded whatever its size."""
        return self._read_head(key, size)

    def exists(self, key: str) -> bool:
        return self._exists(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix`` (relative to nothing: full keys), sorted."""
        return iter(sorted(self._list(prefix)))

    def delete(self, key: str) -> None:
        self._delete(key)

    def job_key(self, project: str, batch_id: str, job_id: str, filename: str) -> str:
        return keys.job_key(self.prefix, project, batch_id, job_id, filename)

    def batch_prefix(self, project: str, batch_id: str) -> str:
        return keys.batch_prefix(self.prefix, project, batch_id)

    def write_batch_manifest(self, project: str, batch_id: str, body: bytes) -> str:
        key = keys.manifest_key(self.prefix, project, batch_id)
        self.put(key, body, "application/x-ndjson")
        return key

    def presigned_url(self, key: str, expires_s: int = 3600) -> str | None:
        """A URL anyone can GET for a while, where the backend supports it."""
        return None

    def check(self) -> None:
        """Raise if the store cannot be reached."""
        self._check()

    # -- per backend ------------------------------------------------------------------------
    def _put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> None:
        raise NotImplementedError

    def _get(self, key: str) -> bytes:
        raise NotImplementedError

    def _read_head(self, key: str, size: int) -> bytes:
        raise NotImplementedError

    def _exists(self, key: str) -> bool:
        raise NotImplementedError

    def _list(self, prefix: str) -> Iterator[str]:
        raise NotImplementedError

    def _delete(self, key: str) -> None:
        raise NotImplementedError

    def _check(self) -> None:
        raise NotImplementedError
