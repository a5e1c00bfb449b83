"""Fingerprints made in bulk are the ones earlier releases stored: the sha256 of one canonical
JSON text (kind, params with references standing for what they point at, the model's identity),
so reuse finds jobs submitted before the bulk path existed."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from jobs.manifest import default_catalog
from jobs.registry import select_schema, storage_refs
from jobs.reuse import fingerprint, fingerprints, model_identity
from jobs.settings import Settings


def reference(catalog: Any, kind: str, params: dict[str, Any], identity: Any) -> str | None:
    """The definition as first written: a deep copy, references rewritten, one dumps."""
    schema = select_schema(catalog.family(params["model"]).kinds[kind], params)
    canonical = json.loads(json.dumps(params))
    for _path, node, _type in storage_refs(canonical, schema):  # type: ignore[arg-type]
        node.pop("job", None)
        node.pop("line", None)
        if "params" not in node and "sha256" not in node:
            return None
        if "sha256" in node:
            node.pop("key", None)
    text = json.dumps({"kind": kind, "params": canonical, "model": identity}, sort_keys=True,
                      separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


JOBS = [
    ("generate", {"model": "aether", "seed": 7, "width": 64, "height": 64, "yaw": 12.5,
                  "truncation": 0.7, "save_latent": False}),
    ("generate", {"model": "aether", "seed": 8, "label": "é \"quoted\" \\ \u2028"}),
    ("edit", {"model": "aether", "op": "latent", "strength": 2.0,
              "source": {"line": 1, "job": "a" * 32, "params": {"model": "aether", "seed": 7}}}),
    ("edit", {"model": "aether", "op": "image", "ops": [{"flip": "horizontal"}],
              "source": {"key": "in/a.png", "sha256": "1" * 64}}),
    ("edit", {"model": "aether", "op": "image", "ops": [{"flip": "horizontal"}],
              "source": {"key": "in/a.png"}}),  # bytes not known: no fingerprint
    ("noop", {"model": "noop", "tag": 3, "payload_bytes": 64}),
]


def test_bulk_fingerprints_are_the_reference_ones() -> None:
    catalog = default_catalog()
    settings = Settings(_env_file=None)

    def identity(model: str) -> dict[str, Any]:
        return model_identity(catalog, model, settings)

    expected = [reference(catalog, kind, params, identity(params["model"]))
                for kind, params in JOBS]
    assert expected[4] is None and all(e is not None for i, e in enumerate(expected) if i != 4)
    assert fingerprints(catalog, identity, JOBS) == expected
    assert [fingerprint(catalog, kind, params, identity(params["model"]))
            for kind, params in JOBS] == expected
