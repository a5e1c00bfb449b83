"""The aether family's weights: a safetensors checkpoint at a local path or storage URL (the
model's ``weights`` in the models file, else ``GENFARM_CHECKPOINT``); without one, the trained
reference checkpoint shipped in this package for the profile (``reference/``, trained on
procedural scenes by ``genfarm model train``); ``seeded`` asks for the untrained seeded weights.
Nothing downloads from the internet; one copy per worker process."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from jobs.errors import PipelineError
from jobs.registry import ModelEntry
from jobs.settings import Settings
from workers.families.aether.network import TriplaneGenerator, reference_generator, weights_sha256

REFERENCE_DIR = Path(__file__).with_name("reference")
SEEDED = "seeded"  # as weights: the seeded, untrained reference weights
TRAINED = "genfarm reference, trained on procedural scenes"


@dataclass
class LoadedModel:
    name: str
    module: TriplaneGenerator
    dtype: torch.dtype
    profile: str
    weights_sha256: str
    weights: str  # where the weights came from, in words (provenance)

    def provenance(self) -> dict[str, Any]:
        from jobs import __version__

        return {"model": self.name, "profile": self.profile, "weights_sha256": self.weights_sha256,
                "weights": self.weights, "genfarm": __version__}


def shipped_checkpoint(profile: str) -> tuple[Path, str] | None:
    """The reference checkpoint shipped for ``profile`` and its recorded sha256, if any."""
    path = REFERENCE_DIR / f"{profile}.safetensors"
    sums = REFERENCE_DIR / "SHA256SUMS"
    if not path.exists() or not sums.exists():
        return None
    recorded = {name: digest for digest, name in
                (line.split() for line in sums.read_text().splitlines() if line.strip())}
    return (path, recorded[path.name]) if path.name in recorded else None


_cache: dict[tuple[Any, ...], LoadedModel] = {}
_lock = threading.Lock()


def fetch_checkpoint(url: str, settings: Settings) -> Path:
    """A local path for a checkpoint given as a path, file:// or s3:// URL (cached by digest)."""
    if "://" not in url:
        return Path(url)
    from storage import open_storage

    scheme_root, _, key = url.partition("://")[2].partition("/")
    store = open_storage(f"{url.split('://')[0]}://{scheme_root}", endpoint_url=settings.s3_endpoint_url)
    data = store.get(key)
    target = settings.data_dir / "models" / f"{hashlib.sha256(data).hexdigest()}.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        target.write_bytes(data)
    return target


def compute_dtype(settings: Settings, device: str) -> torch.dtype:
    return torch.float64 if device == "cpu" and settings.exact_cpu else torch.float32


def load_model(entry: ModelEntry, settings: Settings, device: str,
               dtype: torch.dtype | None = None) -> LoadedModel:
    """The generator of model ``entry`` on ``device``, loaded once per process."""
    profile = str(entry.options.get("profile") or settings.model_profile)
    weights = entry.weights or settings.checkpoint
    pin = entry.sha256 or (settings.checkpoint_sha256 if not entry.weights else None)
    dtype = dtype or compute_dtype(settings, device)
    key = (entry.name, profile, weights, pin, device, dtype)
    with _lock:
        if key in _cache:
            return _cache[key]
        module = reference_generator(profile)
        source = "seeded reference (untrained)"
        shipped = shipped_checkpoint(profile) if not weights else None
        if shipped:
            weights, pin = str(shipped[0]), shipped[1]
        if weights and weights != SEEDED:
            from safetensors.torch import load_file

            path = fetch_checkpoint(weights, settings)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if pin and digest != pin:
                raise PipelineError(f"model {entry.name}: checkpoint {weights} has sha256 {digest}, "
                                    f"not the pinned {pin}")
            try:
                module.load_state_dict(load_file(str(path)))
            except RuntimeError as exc:
                raise PipelineError(f"model {entry.name}: checkpoint {weights} does not fit the "
                                    f"{profile} profile: {str(exc)[:300]}") from exc
            source = (f"{TRAINED} ({path.name} sha256:{digest})" if shipped
                      else f"checkpoint {Path(str(weights)).name} sha256:{digest}")
        digest = weights_sha256(module)  # of the float32 weights, whatever we compute in
        module = module.to(device=device, dtype=dtype).eval()
        loaded = LoadedModel(entry.name, module, dtype, profile, digest, source)
        _cache[key] = loaded
        return loaded


def save_checkpoint(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> str:
    """Write ``state`` as safetensors with its header's keys sorted; returns the file's sha256.
    safetensors writes metadata in hash-map order, which differs between runs: sorting makes
    the same weights and metadata the same bytes (reproducible training, stable digests)."""
    import json
    import struct

    from safetensors.torch import save

    raw = save(state, metadata=metadata)
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.dumps(json.loads(raw[8 : 8 + size]), sort_keys=True, separators=(",", ":"))
    encoded = header.encode() + b" " * (-len(header.encode()) % 8)  # data stays 8-byte aligned
    data = struct.pack("<Q", len(encoded)) + encoded + raw[8 + size :]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def export_checkpoint(entry: ModelEntry, profile: str, path: Path,
                      settings: Settings | None = None) -> str:
    """Write the model's weights (its checkpoint's, the shipped reference ones, or the seeded
    ones) as safetensors; returns the file's sha256."""
    cfg = settings or Settings()
    entry = ModelEntry(entry.name, entry.family, entry.weights, entry.sha256,
                       {**entry.options, "profile": profile})
    module = load_model(entry, cfg, "cpu", torch.float32).module
    state = {k: v.detach().cpu().float().contiguous() for k, v in module.state_dict().items()}
    return save_checkpoint(state, path, {"model": entry.name, "profile": profile})


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] (B, 3, H, W) -> uint8 (B, H, W, 3) on the CPU. From a GPU, made uint8 there
    (a quarter of the bytes to copy) and copied into pinned host memory without blocking the
    stream, then waited for once."""
    pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    pixels = pixels.permute(0, 2, 3, 1).contiguous()
    if pixels.device.type != "cuda":
        return pixels.cpu()
    host = torch.empty(pixels.shape, dtype=torch.uint8, pin_memory=True)
    host.copy_(pixels, non_blocking=True)
    torch.cuda.current_stream(pixels.device).synchronize()
    return host
