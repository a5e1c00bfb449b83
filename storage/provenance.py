"""Provenance travels with every output: a PNG text chunk, and object metadata on S3."""

from __future__ import annotations

import io
import json
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

PNG_KEY = "genfarm"
S3_META_LIMIT = 1800  # S3 allows 2 KB of user metadata in all


def encode_png(rgb: bytes, width: int, height: int, provenance: dict[str, Any],
               compress_level: int = 3) -> bytes:
    """RGB bytes (row-major, 3 per pixel) to PNG bytes with the provenance in an iTXt chunk."""
    image = Image.frombytes("RGB", (width, height), rgb)
    info = PngInfo()
    info.add_itxt(PNG_KEY, json.dumps(provenance, sort_keys=True), zip=True)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info, compress_level=compress_level)
    return buf.getvalue()


def read_png_provenance(data: bytes) -> dict[str, Any]:
    """The provenance stored in a genfarm PNG (empty if there is none)."""
    with Image.open(io.BytesIO(data)) as image:
        text = getattr(image, "text", {}).get(PNG_KEY)
    return json.loads(text) if text else {}


def s3_metadata(provenance: dict[str, Any]) -> dict[str, str]:
    """Provenance as S3 user metadata (ASCII, within S3's size limit; params dropped if too long)."""
    text = json.dumps(provenance, sort_keys=True, ensure_ascii=True)
    if len(text) > S3_META_LIMIT:
        slim = {k: v for k, v in provenance.items() if k != "params"}
        text = json.dumps(slim, sort_keys=True, ensure_ascii=True)[:S3_META_LIMIT]
    return {"genfarm-provenance": text}
