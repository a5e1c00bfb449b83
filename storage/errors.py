"""Storage errors: transient ones are retried by workers, the rest fail the job."""

from __future__ import annotations

from jobs.errors import StorageError


class StorageUnavailable(StorageError, ConnectionError):
    """The store could not be reached or answered with a server error; worth retrying."""


class ObjectNotFound(StorageError, KeyError):
    """No object at that key."""


class ChecksumMismatch(StorageError):
    """An object's bytes do not match the sha256 recorded for it."""


class BadKey(StorageError, ValueError):
    """A key or key part that is not safe to use (empty, '..', odd characters)."""


__all__ = ["StorageError", "StorageUnavailable", "ObjectNotFound", "ChecksumMismatch", "BadKey"]
