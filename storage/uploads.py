"""Uploads: plates, masks and audio a studio puts under its project, for manifests to reference
as sources (``{"key": "in/plate.png"}``). The CLI and the API both call ``upload``.

An upload lands at ``{prefix}/{project}/{folder}/{name}``, relative key ``{folder}/{name}``.
Every folder part and the name are checked here, whoever calls: nothing can leave the project's
folder, and nothing can land in a batch's folder (``{project}/{batch_id}/``, 32 hex digits),
because the first part of an upload's key may never look like a batch id. Uploads therefore
always sit in a folder (``in/`` by default), never loose at the project's root.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from storage.base import Storage
from storage.errors import BadKey, ObjectNotFound, StorageError, StorageUnavailable
from storage.keys import join, safe_part

DEFAULT_PREFIX = "in/"
MAX_NAME = 128  # one key part (storage.keys.safe_part)
MAX_DEPTH = 8  # folders under the project
MAX_KEY = 512  # the relative key; full keys stay well inside S3's 1024 bytes
LIST_LIMIT = 1000

_BATCH_ID = re.compile(r"[0-9a-f]{32}", re.IGNORECASE)  # any case: folders may not care
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Uploaded:
    key: str  # relative to the project: what a manifest names (in/plate.png)
    sha256: str
    bytes: int
    content_type: str
    skipped: bool  # an identical object was there already: nothing was written
    storage_key: str  # the full key in the store ({prefix}/{project}/in/plate.png)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- names and folders ----------------------------------------------------------------------
def safe_prefix(prefix: str) -> tuple[str, ...]:
    """The folder parts of ``prefix`` (``in/``, ``plates/sh010``), refused unless each is plainly
    safe. Nothing is rewritten: a folder is named on purpose, so a bad one is an error."""
    if not isinstance(prefix, str) or not prefix.strip("/"):
        raise BadKey(f"prefix {_shown(prefix)}: an upload goes into a folder of the project, "
                     "e.g. in/")
    if prefix.startswith("/") or prefix.startswith("\\"):
        raise BadKey(f"prefix {_shown(prefix)}: a folder relative to the project's, e.g. in/ (no "
                     "leading '/')")
    parts = tuple(prefix[:-1].split("/") if prefix.endswith("/") else prefix.split("/"))
    if len(parts) > MAX_DEPTH:
        raise BadKey(f"prefix {_shown(prefix)}: {len(parts)} folders deep; at most {MAX_DEPTH}")
    for part in parts:
        _check_folder(prefix, part)
    if _BATCH_ID.fullmatch(parts[0]):
        raise BadKey(f"prefix {_shown(prefix)}: {parts[0]!r} looks like a batch id (32 hex "
                     "digits), and batch folders hold outputs and manifests; choose another "
                     "folder, e.g. in/")
    return parts


def _check_folder(prefix: str, part: str) -> None:
    if part == "":
        problem = "an empty folder name ('//')"
    elif part in (".", ".."):
        problem = f"{_shown(part)} is not a folder name"
    elif "\\" in part:
        problem = "a backslash; folders are separated by '/'"
    elif _CONTROL.search(part):
        problem = "a control character"
    else:
        try:
            safe_part(part)
            return
        except BadKey:
            problem = (f"folder {_shown(part)}: expected up to {MAX_NAME} letters, digits, '.', "
                       "'_' or '-', starting with a letter or digit")
    raise BadKey(f"prefix {_shown(prefix)}: {problem}")


def safe_name(name: str) -> str:
    """A stored file name for ``name``: Unicode compatibility forms folded and accents dropped
    (``ｐｌａｔｅ.png`` and ``café.wav`` read as ``plate.png``, ``cafe.wav``), then every run of
    characters other than letters, digits, '.', '_' and '-' (spaces, invisible marks) made one
    '_'. Path separators (folded ones too), control characters, and names with no letters or
    digits before the extension are refused."""
    if not isinstance(name, str) or not name:
        raise BadKey("empty file name: expected a name such as plate.png")
    if name in (".", ".."):
        raise BadKey(f"{_shown(name)} is not a file name: expected a name such as plate.png")
    folded = "".join(c for c in unicodedata.normalize("NFKD", name)
                     if not unicodedata.combining(c))
    if "/" in folded or "\\" in folded:
        raise BadKey(f"file name {_shown(name)}: holds a path separator; give the folder as "
                     "the prefix")
    if _CONTROL.search(folded):
        raise BadKey(f"file name {_shown(name)}: holds a control character")
    stem, dot, ext = folded.rpartition(".")
    if not dot or not stem:
        stem, ext = folded, ""
    stem, ext = _clean(stem), _clean(ext)
    if not stem:
        raise BadKey(f"file name {_shown(name)}: no letters or digits (A-Z, a-z, 0-9) before its "
                     "extension; rename the file")
    cleaned = f"{stem}.{ext}" if ext else stem
    if len(cleaned) > MAX_NAME:
        raise BadKey(f"file name {_shown(name)}: {len(cleaned)} characters; at most {MAX_NAME}")
    return safe_part(cleaned)


def _shown(text: object, limit: int = 80) -> str:
    """``text`` for an error message, cut short: a name may be thousands of characters."""
    if not isinstance(text, str):
        return repr(text)
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def _clean(text: str) -> str:
    return re.sub(r"\.{2,}", ".", _UNSAFE_RUN.sub("_", text)).strip("._-")


def upload_key(prefix: str, project: str, name: str, root: str = "") -> str:
    """The key relative to the project (``in/plate.png``) for ``name`` in ``prefix``, in a
    store whose keys start with ``root`` (its prefix)."""
    from jobs.sources import project_keys

    key = "/".join((*safe_prefix(prefix), safe_name(name)))
    if len(key) > MAX_KEY:
        raise BadKey(f"{key[:60]}...: the key is {len(key)} characters; at most {MAX_KEY}")
    # a manifest names the upload by this key: it must mean this object and no other (a key
    # that starts with the project's folder, acme/..., reads as that folder's own key)
    folder = join(root, project) + "/"
    meant = project_keys(root, project, key)[0]
    if meant != folder + key:
        raise BadKey(f"prefix {_shown(prefix)}: it starts with the project's own folder, so a "
                     f"manifest's {key!r} would mean the project's {meant[len(folder):]!r}; "
                     "choose another folder, e.g. in/")
    return key


# -- media types ----------------------------------------------------------------------------
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"), (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF8", 0, "image/gif"), (b"II*\x00", 0, "image/tiff"), (b"MM\x00*", 0, "image/tiff"),
    (b"v/1\x01", 0, "image/x-exr"), (b"8BPS", 0, "image/vnd.adobe.photoshop"),
    (b"ID3", 0, "audio/mpeg"), (b"\xff\xfb", 0, "audio/mpeg"), (b"\xff\xf3", 0, "audio/mpeg"),
    (b"\xff\xf2", 0, "audio/mpeg"), (b"OggS", 0, "audio/ogg"), (b"fLaC", 0, "audio/flac"),
    (b"\x1aE\xdf\xa3", 0, "video/webm"),
)
_RIFF = {b"WAVE": "audio/wav", b"WEBP": "image/webp", b"AVI ": "video/x-msvideo"}
_FTYP = {b"M4A ": "audio/mp4", b"M4B ": "audio/mp4", b"qt  ": "video/quicktime"}
_BY_EXTENSION = {
    "png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp",
    "tif": "image/tiff", "tiff": "image/tiff", "exr": "image/x-exr", "gif": "image/gif",
    "wav": "audio/wav", "mp3": "audio/mpeg", "ogg": "audio/ogg", "flac": "audio/flac",
    "m4a": "audio/mp4", "mp4": "video/mp4", "mov": "video/quicktime", "webm": "video/webm",
    "json": "application/json", "jsonl": "application/x-ndjson", "txt": "text/plain",
    "csv": "text/csv", "safetensors": "application/octet-stream",
}


def content_type(name: str, data: bytes) -> str:
    """What ``data`` is, by its first bytes, else by ``name``'s extension (a fixed table, not the
    host's mime.types, so every machine says the same)."""
    for magic, at, kind in _MAGIC:
        if data[at:at + len(magic)] == magic:
            return kind
    if data[:4] == b"RIFF" and data[8:12] in _RIFF:
        return _RIFF[data[8:12]]
    if data[4:8] == b"ftyp":
        return _FTYP.get(data[8:12], "video/mp4")
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return _BY_EXTENSION.get(ext, "application/octet-stream")


# -- upload and list ------------------------------------------------------------------------
def upload(storage: Storage, project: str, name: str, data: bytes,
           prefix: str = DEFAULT_PREFIX) -> Uploaded:
    """Store ``data`` as ``name`` in ``prefix`` of ``project``; an object with the same sha256
    there already is left as it is (``skipped``). Raises BadKey naming what was wrong."""
    from jobs.submit import InvalidProject, check_project

    try:
        check_project(project)
    except InvalidProject as exc:
        raise BadKey(str(exc)) from None
    key = upload_key(prefix, project, name, storage.prefix)
    full = join(storage.prefix, project, *key.split("/"))
    digest = hashlib.sha256(data).hexdigest()
    kind = content_type(key, data)
    try:
        if _stored_sha256(storage, full, len(data)) == digest:
            return Uploaded(key, digest, len(data), kind, True, full)
        meta = {"genfarm-upload": json.dumps({"name": name[:200]}, ensure_ascii=True)}
        stored = storage.put(full, data, kind, metadata=meta)
    except (FileExistsError, NotADirectoryError, IsADirectoryError):
        # a local folder only: S3 keys do not nest, so in/a and in/a/b.png can both be there
        raise BadKey(f"{key}: a file and a folder of the project would share a name "
                     "(in/a and in/a/...); choose another name or prefix") from None
    return Uploaded(key, stored.sha256, stored.bytes, kind, False, full)


def _stored_sha256(storage: Storage, key: str, size: int) -> str | None:
    """The sha256 of the object at ``key``, or None if there is none. Where the backend keeps
    metadata (S3's head), the recorded sha256 is read without fetching the object."""
    head = getattr(storage, "head", None)  # S3Storage; the local folder keeps no metadata
    try:
        if callable(head):
            found = head(key)
            if found.get("ContentLength") != size:
                return None
            recorded = (found.get("Metadata") or {}).get("sha256")
            if recorded:
                return str(recorded)
        return hashlib.sha256(storage.get(key)).hexdigest()
    except ObjectNotFound:
        return None


def list_uploads(storage: Storage, project: str, prefix: str = DEFAULT_PREFIX,
                 limit: int = LIST_LIMIT) -> tuple[list[dict[str, Any]], bool]:
    """The project's uploads under ``prefix`` as ``{"key", "bytes"}`` (keys relative to the
    project), sorted, at most ``limit``; and whether there were more."""
    root = join(storage.prefix, project) + "/"
    under = join(storage.prefix, project, *safe_prefix(prefix)) + "/"
    items: list[dict[str, Any]] = []
    for full, size in _sized(storage, under):
        if len(items) == limit:
            return items, True
        items.append({"key": full[len(root):], "bytes": size})
    return items, False


def _sized(storage: Storage, prefix: str) -> Iterator[tuple[str, int]]:
    """(key, bytes) under ``prefix`` in key order, without a request per object: sizes come with
    S3's listing and from the local folder's stat. (Storage.list gives keys only.)"""
    client, bucket = getattr(storage, "client", None), getattr(storage, "bucket", None)
    if client is not None and bucket is not None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                         Prefix=prefix):
                for obj in page.get("Contents", []):
                    yield obj["Key"], int(obj["Size"])
        except ClientError as exc:
            raise StorageError(f"{prefix}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"{prefix}: {type(exc).__name__}: {exc}") from exc
        return
    path_of = getattr(storage, "path_of", None)
    if callable(path_of):
        if not path_of(prefix).is_dir():
            return  # else the local listing walks the folder above: the whole project
        for key in storage.list(prefix):
            yield key, path_of(key).stat().st_size
        return
    for key in storage.list(prefix):
        yield key, len(storage.get(key))
