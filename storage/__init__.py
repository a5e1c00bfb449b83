"""Object storage behind one interface, chosen by URL: file:///path or s3://bucket/prefix."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from storage.base import Storage, StoredObject
from storage.errors import StorageError

__all__ = ["Storage", "StoredObject", "open_storage"]


def open_storage(url: str, *, endpoint_url: str | None = None, max_connections: int = 16) -> Storage:
    """The storage backend for ``url``."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        from storage.backends.local import LocalStorage

        return LocalStorage(Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        from storage.backends.s3 import S3Storage

        if not parsed.netloc:
            raise StorageError(f"{url}: expected s3://bucket/prefix")
        return S3Storage(parsed.netloc, parsed.path, endpoint_url=endpoint_url,
                         max_connections=max_connections)
    if parsed.scheme == "" and url:
        from storage.backends.local import LocalStorage

        return LocalStorage(Path(url))
    raise StorageError(f"unsupported storage URL {url!r}: use file:///path or s3://bucket/prefix")
