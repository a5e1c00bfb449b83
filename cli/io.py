"""What the CLI reads and prints: manifests read under a size cap, user text made safe for a
terminal, and the one-line ``error: ...`` every failure a user can cause ends in."""

from __future__ import annotations

import os
import re
import stat
import sys
from typing import IO, Any

import click

MAX_MANIFEST_BYTES = 64 * 1024 * 1024  # validated whole, so held in memory: 100,000 long lines fit
CHUNK_BYTES = 1024 * 1024

# C0 and C1 controls (ESC starts terminal sequences, CR rewrites the line), DEL, and the
# invisible marks that reorder text (bidi overrides and isolates, line and paragraph separators)
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_UNSAFE_MULTILINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def printable(text: object, *, multiline: bool = False) -> str:
    """``text`` as it may reach a terminal: control characters and bidi marks escaped (``\\x1b``,
    ``\\r``, ``\\u202e``), so a name cannot clear the screen, rewrite a line or reorder text.
    Newlines are kept only when ``multiline``."""
    return (_UNSAFE_MULTILINE if multiline else _UNSAFE).sub(_escape, str(text))


class Failure(click.ClickException):
    """A failure the user can fix: one ``error: ...`` line on stderr and exit status 1."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {printable(self.format_message())}", file=file or sys.stderr)


class Refused(Failure):
    """A request that can never work as given (bad input, setting or revision): exit status 2."""

    exit_code = 2


def human_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


class ByteSize(click.ParamType):
    """A size in bytes: 1000, 64KiB, 256MiB, 1GiB (K, M, G are binary too)."""

    name = "size"
    _RE = re.compile(r"\s*(\d+)\s*(?:([kmg])(?:i?b)?|b)?\s*", re.IGNORECASE)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        match = self._RE.fullmatch(str(value))
        if match is None or int(match.group(1)) < 1:
            self.fail(f"{value!r} is not a size such as 1000, 64KiB or 256MiB", param, ctx)
        unit = (match.group(2) or "").lower()
        return int(match.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[unit]


def read_manifest(path: str, limit: int = MAX_MANIFEST_BYTES) -> bytes:
    """The bytes of the manifest at ``path`` ('-' for stdin), read in chunks and refused as soon
    as they pass ``limit``: a stream without end (/dev/zero, a runaway pipe) costs at most that."""
    if path == "-":
        return _read_capped(sys.stdin.buffer, "stdin", limit)
    with open(path, "rb") as f:
        info = os.fstat(f.fileno())
        if stat.S_ISREG(info.st_mode) and info.st_size > limit:
            raise _too_large(path, limit)
        return _read_capped(f, path, limit)


def _read_capped(stream: IO[bytes], name: str, limit: int) -> bytes:
    # chunks in a list, joined once at the end: a growing buffer may be copied when it is
    # reallocated, which would hold the stream twice just before it is refused
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = stream.read(min(CHUNK_BYTES, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise _too_large(name, limit)


def _too_large(name: str, limit: int) -> Refused:
    return Refused(f"{name}: manifest larger than the {human_bytes(limit)} limit "
                   "(--max-bytes raises it); nothing was submitted")


def human_duration(seconds: float) -> str:
    """12 s, 14 min, 3.1 h, 2.5 d."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} d"
