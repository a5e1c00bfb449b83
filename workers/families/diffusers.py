"""The worker side of the ``diffusers`` family: one pipeline per process, loaded from a local
folder (never downloaded), its img2img and inpaint pipelines sharing the same components. A pass
is one pipeline call: a list of prompts, one seeded generator per job."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image
from pydantic import ValidationError

from jobs.errors import PipelineError
from jobs.families.diffusers import (
    SAFETY_COMPONENTS,
    DiffusersOptions,
    WeightsError,
    components,
    weights_digest,
)
from storage.errors import StorageError, StorageUnavailable
from storage.provenance import encode_png, s3_metadata
from workers.family import Artifact, Family, JobContext, JobFailed, PermanentError, Result, Retry
from workers.limits import reraise_time_limit

SCHEDULERS = {  # the names jobs and the models file use -> diffusers scheduler classes
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
}
# Settings a scheduler needs when built from another one's config (Stable Diffusion's own
# PNDM skips the Runge-Kutta warm-up, which needs more steps than a job may ask for).
SCHEDULER_DEFAULTS: dict[str, dict[str, Any]] = {"pndm": {"skip_prk_steps": True}}
EDIT_PIPELINES = {"img2img": "AutoPipelineForImage2Image", "inpaint": "AutoPipelineForInpainting"}
MAX_SOURCE_PIXELS = 4096 * 4096  # refused before decoding: a source is resized to 2048 at most
PROGRESS_MARKS = 4  # progress reports per pass (each is a database write per job)


class DiffusersFamily(Family):
    """Runs generate and edit jobs of one diffusers model."""

    def _setup(self, device: str, dtype: Any) -> None:
        name = self.model.name
        try:
            self.options = DiffusersOptions.model_validate(dict(self.model.options))
        except ValidationError as exc:
            raise PipelineError(f"model {name}: bad options: {exc}") from exc
        with _offline():
            try:
                import diffusers
                import transformers  # noqa: F401 - Stable Diffusion's text encoder and tokenizer
            except ImportError as exc:
                raise PipelineError(f"model {name}: the diffusers family needs the diffusers and "
                                    "transformers packages: pip install 'genfarm[diffusers]' "
                                    f"({exc})") from exc
            self.folder, self.digest = weights_digest(self.model)
            if self.model.sha256 and self.digest != self.model.sha256:
                raise WeightsError(f"model {name}: weights {self.folder} have sha256 "
                                   f"{self.digest}, not the pinned {self.model.sha256}")
            index = components(self.folder, self.model, self.options.safety_checker)
            self.dtype = self._dtype(device, dtype)
            skip: dict[str, Any] = {}
            if not self.options.safety_checker and "safety_checker" in index:
                skip = {c: None for c in SAFETY_COMPONENTS if c in index}
                skip["requires_safety_checker"] = False
            try:
                pipe = diffusers.AutoPipelineForText2Image.from_pretrained(
                    str(self.folder), dtype=self.dtype, local_files_only=True, **skip)
            except Exception as exc:  # noqa: BLE001 - named with the model and the folder
                raise PipelineError(f"model {name}: cannot load the pipeline in {self.folder}: "
                                    f"{type(exc).__name__}: {exc}") from exc
        self._diffusers = diffusers
        pipe.to(device)
        self.pipes: dict[str, Any] = {"text2img": pipe}
        self.unsupported: dict[str, str] = {}
        for op, auto in EDIT_PIPELINES.items():
            try:  # from_pipe shares the components: no second copy of the weights
                self.pipes[op] = getattr(diffusers, auto).from_pipe(pipe)
            except Exception as exc:  # noqa: BLE001 - the model then serves no such edit
                reraise_time_limit(exc)
                self.unsupported[op] = (f"model {name} ({type(pipe).__name__}) has no {op} "
                                        f"pipeline: {exc}")
        for p in self.pipes.values():
            p.set_progress_bar_config(disable=True)
        self.default_scheduler = pipe.scheduler
        self.schedulers: dict[str, Any] = {}

    def _dtype(self, device: str, given: Any) -> torch.dtype:
        if self.options.dtype != "auto":
            chosen: torch.dtype = getattr(torch, self.options.dtype)
            return chosen
        if device.startswith("cuda"):
            return torch.float16
        return given if isinstance(given, torch.dtype) else torch.float32

    def provenance(self) -> dict[str, Any]:
        from jobs import __version__

        return {"model": self.model.name, "family": self.model.family,
                "weights_sha256": self.digest, "dtype": str(self.dtype).removeprefix("torch."),
                "diffusers": self._diffusers.__version__, "genfarm": __version__}

    # -- a pass ---------------------------------------------------------------------------------
    def _run(self, batch: list[JobContext]) -> list[Result]:
        first = batch[0].params
        op: str | None = first.get("op")
        pipe = self.pipes.get(op or "text2img")
        if pipe is None:
            return [PermanentError(self.unsupported[str(op)]) for _ in batch]
        scheduler = first.get("scheduler") or self.options.scheduler
        pipe.scheduler = self._scheduler(scheduler)
        results: list[Result | None] = [None] * len(batch)
        inputs: dict[int, tuple[Image.Image, Image.Image | None]] = {}
        groups: dict[tuple[int, int], list[int]] = {}
        for i, ctx in enumerate(batch):
            if op is None:
                size = (int(ctx.params["width"]), int(ctx.params["height"]))
            else:
                try:
                    inputs[i] = self._sources(ctx)
                except JobFailed as exc:  # this job's own bad source: the others still run
                    results[i] = exc
                    continue
                size = inputs[i][0].size
            groups.setdefault(size, []).append(i)
        # One pipeline call per output size: one in all, unless edits take their sources' sizes.
        base = {**self.provenance(), "pipeline": type(pipe).__name__,
                "scheduler": scheduler or "model", "sampler": type(pipe.scheduler).__name__}
        for (width, height), idx in groups.items():
            jobs = [batch[i] for i in idx]
            done = self._call(pipe, op, jobs, [inputs[i] for i in idx] if op else [],
                              width, height, base)
            for i, result in zip(idx, done, strict=True):
                results[i] = result
        return [r for r in results if r is not None]  # every job has its result by now

    def _call(self, pipe: Any, op: str | None, jobs: list[JobContext],
              inputs: list[tuple[Image.Image, Image.Image | None]], width: int, height: int,
              base: dict[str, Any]) -> list[Result]:
        p0 = jobs[0].params
        # CPU generators: a seed gives the same starting noise on any device.
        gens = [torch.Generator("cpu").manual_seed(int(c.params["seed"])) for c in jobs]
        stopped: list[bool] = []
        kwargs: dict[str, Any] = {
            "prompt": [c.params["prompt"] for c in jobs],
            "negative_prompt": [c.params.get("negative_prompt", "") for c in jobs],
            "num_inference_steps": int(p0["steps"]),
            "guidance_scale": float(p0["guidance"]),
            "generator": gens,
            "output_type": "np",
            "callback_on_step_end": _reporter(jobs, int(p0["steps"]), stopped),
        }
        if op is None:
            kwargs.update(width=width, height=height)
        else:
            kwargs.update(image=[src for src, _ in inputs], strength=float(p0["strength"]))
        if op == "inpaint":
            kwargs.update(mask_image=[mask for _, mask in inputs], width=width, height=height)
        out = pipe(**kwargs)
        images = np.asarray(out.images, dtype=np.float32)
        if stopped:  # no job of the pass is held any more: its half-made images are not stored
            return [Retry("stopped: no job of this pass is held any more") for _ in jobs]
        flags = getattr(out, "nsfw_content_detected", None) or [None] * len(jobs)
        results: list[Result] = []
        for ctx, image, flag in zip(jobs, images, flags, strict=True):
            if not np.isfinite(image).all():
                results.append(PermanentError(
                    f"model {self.model.name} made non-finite pixels in {base['dtype']} (an "
                    "overflow? try options.dtype = \"float32\")"))
                continue
            pixels = (image * 255).round().clip(0, 255).astype(np.uint8)
            prov = {**base, "kind": ctx.kind, "params": ctx.params, "seed": ctx.params["seed"],
                    "job_id": ctx.job_id, "batch_id": ctx.batch_id}
            if flag is not None:
                prov["nsfw"] = bool(flag)
            results.append([_png(pixels, prov)])
        return results

    def _scheduler(self, name: str | None) -> Any:
        """The model's own scheduler, or ``name`` built from its config (once per process)."""
        if name is None:
            return self.default_scheduler
        if name not in self.schedulers:
            cls = getattr(self._diffusers, SCHEDULERS[name])
            config = self.default_scheduler.config
            extra = {k: v for k, v in SCHEDULER_DEFAULTS.get(name, {}).items() if k not in config}
            self.schedulers[name] = cls.from_config(config, **extra)
        return self.schedulers[name]

    # -- sources ----------------------------------------------------------------------------------
    def _sources(self, ctx: JobContext) -> tuple[Image.Image, Image.Image | None]:
        """The job's source (and mask) at its output size: width and height, else the source's
        down to a multiple of 8 (one of them given: the other keeps the source's aspect)."""
        params = ctx.params
        source = _read_image(ctx, params["source"], "source", "RGB")
        size = _output_size(source.size, params.get("width"), params.get("height"))
        if not all(64 <= side <= 2048 for side in size):
            raise PermanentError(f"source {params['source'].get('key')} is "
                                 f"{source.width}x{source.height}, which makes a "
                                 f"{size[0]}x{size[1]} output; sides run 64..2048: give width "
                                 "and height")
        if source.size != size:
            source = source.resize(size, Image.Resampling.LANCZOS)
        mask = None
        if params.get("mask") is not None:
            mask = _read_image(ctx, params["mask"], "mask", "L")
            if mask.size != size:
                mask = mask.resize(size, Image.Resampling.BILINEAR)
        return source, mask


def _output_size(source: tuple[int, int], width: int | None,
                 height: int | None) -> tuple[int, int]:
    sw, sh = source
    if width is not None and height is not None:
        return width, height
    if width is not None:
        return width, round(sh * width / sw) // 8 * 8
    if height is not None:
        return round(sw * height / sh) // 8 * 8, height
    return sw // 8 * 8, sh // 8 * 8


def _read_image(ctx: JobContext, ref: dict[str, Any], what: str, mode: str) -> Image.Image:
    """A stored image, decoded; anything wrong with it is this job's own failure."""
    key = ref.get("key")
    try:
        data = ctx.read_source(ref)
    except StorageUnavailable as exc:
        raise Retry(f"{what} {key}: storage unavailable: {exc}") from exc
    except StorageError as exc:
        raise PermanentError(f"{what} {key}: {exc}") from exc
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_SOURCE_PIXELS:
                raise PermanentError(f"{what} {key} is {im.width}x{im.height}: too large "
                                     f"(at most {MAX_SOURCE_PIXELS} pixels)")
            return im.convert(mode)
    except PermanentError:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt source fails its own job, permanently
        reraise_time_limit(exc)  # (the unit's time limit is no fault of the source's)
        raise PermanentError(f"{what} {key} is not a readable image: "
                             f"{type(exc).__name__}: {exc}") from exc


def _png(pixels: np.ndarray, prov: dict[str, Any]) -> Artifact:
    raw, height, width = pixels.tobytes(), pixels.shape[0], pixels.shape[1]
    return Artifact("image.png", "image/png", lambda: encode_png(raw, width, height, prov),
                    metadata=s3_metadata(prov))


def _reporter(jobs: list[JobContext], steps: int, stopped: list[bool]) -> Callable[..., Any]:
    """A step-end callback: progress a few times a pass; stop when no job is held any more."""

    def on_step(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        total = int(getattr(pipe, "num_timesteps", None) or steps)
        marks = {max(1, round(total * k / PROGRESS_MARKS)) for k in range(1, PROGRESS_MARKS)}
        if step + 1 in marks:
            held = [ctx.progress((step + 1) / total) for ctx in jobs]
            if not any(held):
                stopped.append(True)
                pipe._interrupt = True  # diffusers' documented way to end the loop early
        return tensors

    return on_step


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Hugging Face libraries offline while loading (they read this when first imported; the
    real guard is loading from a local folder with local_files_only)."""
    names = ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY")
    saved = {n: os.environ.get(n) for n in names}
    os.environ.update({n: "1" for n in names})
    try:
        yield
    finally:
        for n, value in saved.items():
            if value is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = value
