"""What a studio calls a batch: a name, labels (shot, artist, version) and a URL to notify.

Labels are rows of their own (``batch_labels``), so status, usage and listings filter on them
with one indexed join on every database.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from jobs.errors import GenfarmError
from jobs.models import Batch, BatchLabel
from jobs.receivers import literal_refusal

LABEL_KEY_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
MAX_LABELS = 32
MAX_NAME = 128
MAX_VALUE = 255
MAX_URL = 2048


class InvalidMeta(GenfarmError, ValueError):
    """A batch name, label or webhook URL that genfarm does not take; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class BatchMeta:
    """A batch's name, labels and webhook URL, as given at submission (checked: ``checked``)."""

    name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    webhook_url: str | None = None

    def checked(self) -> BatchMeta:
        return BatchMeta(check_name(self.name), check_labels(self.labels),
                         check_webhook_url(self.webhook_url) if self.webhook_url else None)


def check_name(name: Any) -> str:
    if not isinstance(name, str):
        raise InvalidMeta("name", f"name: expected text, got {type(name).__name__}")
    if len(name) > MAX_NAME:
        raise InvalidMeta("name", f"name: {len(name)} characters, at most {MAX_NAME}")
    if not all(ch.isprintable() for ch in name):
        raise InvalidMeta("name", "name: control characters are not allowed")
    return name.strip()


def check_labels(labels: Any) -> dict[str, str]:
    if not isinstance(labels, Mapping):
        raise InvalidMeta("labels", "labels: expected an object of key: value, got "
                          f"{type(labels).__name__}")
    if len(labels) > MAX_LABELS:
        raise InvalidMeta("labels", f"labels: {len(labels)} labels, at most {MAX_LABELS}")
    out: dict[str, str] = {}
    for key, value in labels.items():
        out[check_label_key(key)] = check_label_value(key, value)
    return out


def check_label_key(key: Any) -> str:
    if not isinstance(key, str) or not LABEL_KEY_RE.fullmatch(key):
        raise InvalidMeta(f"labels.{str(key)[:64]}",
                          f"label {str(key)[:70]!r}: a key is 1-64 characters of a-z, 0-9, "
                          "'_', '.' and '-', starting with a letter or digit (e.g. shot=010)")
    return key


def check_label_value(key: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidMeta(f"labels.{key}",
                          f"label {key!r}: expected text, got {type(value).__name__}")
    value = str(value)
    if len(value) > MAX_VALUE or not all(ch.isprintable() for ch in value):
        raise InvalidMeta(f"labels.{key}",
                          f"label {key!r}: a value is at most {MAX_VALUE} printable characters")
    return value


def parse_labels(pairs: Iterable[str]) -> dict[str, str]:
    """``key=value`` strings (``--label shot=010``) as labels; a key given twice is an error."""
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InvalidMeta("labels", f"label {pair[:70]!r}: expected key=value, e.g. shot=010")
        key = check_label_key(key.strip())
        if key in labels:
            raise InvalidMeta("labels", f"label {key!r} given twice")
        labels[key] = check_label_value(key, value.strip())
    return labels


def check_webhook_url(url: Any) -> str:
    """An absolute http(s) URL with a host, no credentials in it, at most 2048 characters."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise InvalidMeta("webhook_url",
                          f"webhook URL: expected an http(s) URL of at most {MAX_URL} characters")
    if not url.isascii() or any(ch.isspace() or not ch.isprintable() for ch in url):
        raise InvalidMeta("webhook_url", "webhook URL: spaces, control and non-ASCII "
                          "characters are not allowed (percent-encode them)")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        raise InvalidMeta("webhook_url", f"webhook URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidMeta("webhook_url", f"webhook URL {url[:100]!r}: expected "
                          "http://host/... or https://...")
    if parts.username or parts.password:
        raise InvalidMeta("webhook_url", "webhook URL: credentials in the URL are not "
                          "allowed (receivers check the X-Genfarm-Signature header instead)")
    why = literal_refusal(parts.hostname)
    if why:
        raise InvalidMeta("webhook_url", f"webhook URL: {parts.hostname} is {why}, where no "
                          "receiver may be (webhooks never go there)")
    return url


def label_rows(batch_id: str, labels: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"batch_id": batch_id, "key": k, "value": v} for k, v in sorted(labels.items())]


def labels_of(session: Session, batch_ids: Iterable[str]) -> dict[str, dict[str, str]]:
    """Each batch's labels, for the batches given (one query)."""
    ids = list(dict.fromkeys(batch_ids))
    out: dict[str, dict[str, str]] = {b: {} for b in ids}
    for start in range(0, len(ids), 500):
        for row in session.scalars(select(BatchLabel).where(
                BatchLabel.batch_id.in_(ids[start:start + 500])).order_by(BatchLabel.key)):
            out[row.batch_id][row.key] = row.value
    return out


def where_batch(stmt: Select[Any], name: str | None = None,
                labels: Mapping[str, str] | None = None) -> Select[Any]:
    """``stmt`` (which selects from or joins ``batches``) narrowed to batches of this name and
    carrying every one of these labels."""
    if name:
        stmt = stmt.where(Batch.name == name)
    for key, value in (labels or {}).items():
        stmt = stmt.where(select(BatchLabel.batch_id).where(
            BatchLabel.batch_id == Batch.id, BatchLabel.key == key,
            BatchLabel.value == value).exists())
    return stmt
