"""The key layout: {prefix}/{project}/{batch}/{job}/{name}.{ext}, every part sanitized."""

from __future__ import annotations

import re

from storage.errors import BadKey

_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def safe_part(part: str) -> str:
    """One path segment from user or system input: refused unless plainly safe."""
    if not isinstance(part, str) or not _PART.fullmatch(part) or ".." in part:
        raise BadKey(f"unsafe key part {part!r}: expected letters, digits, '.', '_' or '-'")
    return part


def sanitize_name(name: str, fallback: str = "output") -> str:
    """Turn a user-supplied file name into a safe one (used where we must accept the input)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip()).strip("._-")
    cleaned = re.sub(r"\.{2,}", ".", cleaned)[:100]
    return cleaned or fallback


def join(prefix: str, *parts: str) -> str:
    clean = [safe_part(p) for p in parts]
    return "/".join([prefix.strip("/")] + clean) if prefix.strip("/") else "/".join(clean)


def job_key(prefix: str, project: str, batch_id: str, job_id: str, filename: str) -> str:
    return join(prefix, project, batch_id, job_id, filename)


def batch_prefix(prefix: str, project: str, batch_id: str) -> str:
    return join(prefix, project, batch_id) + "/"


def manifest_key(prefix: str, project: str, batch_id: str) -> str:
    return join(prefix, project, batch_id, "manifest.jsonl")
