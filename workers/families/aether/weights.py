"""The model registry: a name gives an architecture, its weights (a safetensors checkpoint at a
local path or storage URL, or seeded reference weights) and their sha256. Nothing downloads from
the internet; one copy per worker process, shared by every pipeline."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from jobs.errors import PipelineError
from jobs.settings import Settings
from workers.models.aether import TriplaneGenerator, reference_generator, weights_sha256

ARCHITECTURES = {"aether": reference_generator}


@dataclass
class LoadedModel:
    name: str
    module: TriplaneGenerator
    dtype: torch.dtype
    profile: str
    weights_sha256: str
    checkpoint: str | None  # where the weights came from, None for reference weights

    def provenance(self) -> dict[str, Any]:
        from jobs import __version__

        return {"model": self.name, "profile": self.profile, "weights_sha256": self.weights_sha256,
                "weights": f"checkpoint {self.checkpoint}" if self.checkpoint
                else "reference (untrained)", "genfarm": __version__}


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


def load_model(name: str, settings: Settings, device: str) -> LoadedModel:
    key = (name, settings.model_profile, settings.checkpoint, settings.checkpoint_sha256, device,
           settings.exact_cpu)
    with _lock:
        if key in _cache:
            return _cache[key]
        if name not in ARCHITECTURES:
            raise PipelineError(f"unknown model {name!r}")
        module = ARCHITECTURES[name](settings.model_profile)
        source = None
        if settings.checkpoint:
            from safetensors.torch import load_file

            path = fetch_checkpoint(settings.checkpoint, settings)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if settings.checkpoint_sha256 and digest != settings.checkpoint_sha256:
                raise PipelineError(f"checkpoint {settings.checkpoint}: sha256 {digest} is not the "
                                    f"expected {settings.checkpoint_sha256}")
            try:
                module.load_state_dict(load_file(str(path)))
            except RuntimeError as exc:
                raise PipelineError(f"checkpoint {settings.checkpoint} does not fit {name} "
                                    f"({settings.model_profile}): {str(exc)[:300]}") from exc
            source = f"{Path(str(settings.checkpoint)).name} sha256:{digest}"
        digest = weights_sha256(module)  # of the float32 weights, whatever we compute in
        dtype = compute_dtype(settings, device)
        module = module.to(device=device, dtype=dtype).eval()
        loaded = LoadedModel(name, module, dtype, settings.model_profile, digest, source)
        _cache[key] = loaded
        return loaded


def export_checkpoint(name: str, profile: str, path: Path, settings: Settings | None = None) -> str:
    """Write the model's weights (reference ones, or the configured checkpoint's) as safetensors;
    returns the file's sha256."""
    from safetensors.torch import save_file

    cfg = (settings or Settings()).model_copy(update={"model_profile": profile})
    module = load_model(name, cfg, "cpu").module
    state = {k: v.detach().cpu().float().contiguous() for k, v in module.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"model": name, "profile": profile})
    return hashlib.sha256(path.read_bytes()).hexdigest()


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] (B, 3, H, W) -> uint8 (B, H, W, 3) on the CPU."""
    pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous().cpu()
