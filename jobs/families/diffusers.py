"""The ``diffusers`` family: the diffusion models studios already have on disk (Stable Diffusion
and its kin), as a folder written by ``save_pretrained`` or a local Hugging Face cache folder.
Kinds: generate (text to image) and edit (img2img, inpaint). Torch-free: the worker side is
``workers.families.diffusers``; this module also finds and digests a model's weights folder, so
``genfarm models`` and the worker agree on what a pin means. Nothing is ever downloaded."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, Field, model_validator

from jobs.errors import PipelineError
from jobs.registry import FamilySpec, ImageRef, ModelEntry, Params, Variants

MAX_SIDE = 2048
SchedulerName = Literal["ddim", "ddpm", "pndm", "lms", "euler", "euler_a", "heun", "dpm", "unipc"]
# Loaded only when the model's options ask for the safety checker.
SAFETY_COMPONENTS = ("safety_checker", "feature_extractor")


class WeightsError(PipelineError):
    """A diffusers model folder that is missing, incomplete, or not the pinned weights."""


class Prompted(Params):
    """What every diffusers job shares: prompts, sampling, seed."""

    model: str = Field(description="The model (see `genfarm models`).")
    prompt: str = Field(min_length=1, max_length=2000, description="What the image shows.")
    negative_prompt: str = Field("", max_length=2000, description="What it should not show.")
    steps: int = Field(30, ge=1, le=150, description="Denoising steps.")
    guidance: float = Field(7.5, ge=0.0, le=30.0,
                            description="Classifier-free guidance scale (1 or less: none).")
    scheduler: SchedulerName | None = Field(
        None, description="Sampler [default: the model's, from the models file or its folder].")
    seed: int = Field(ge=0, lt=2**32, description="Noise seed; same seed, same image.")


class DiffusersGenerate(Prompted):
    """An image from a text prompt."""

    width: int = Field(512, ge=64, le=MAX_SIDE, multiple_of=8, description="Width in pixels.")
    height: int = Field(512, ge=64, le=MAX_SIDE, multiple_of=8, description="Height in pixels.")


class EditBase(Prompted):
    source: ImageRef = Field(description="The image to edit: a stored key or a succeeded job.")
    width: int | None = Field(None, ge=64, le=MAX_SIDE, multiple_of=8,
                              description="Output width [default: the source's, down to a "
                              "multiple of 8].")
    height: int | None = Field(None, ge=64, le=MAX_SIDE, multiple_of=8,
                               description="Output height [default: the source's, down to a "
                               "multiple of 8].")
    strength: float = Field(0.75, gt=0.0, le=1.0, description="How far from the source to go "
                            "(1: ignore its pixels); steps x strength steps are run.")

    @model_validator(mode="after")
    def _runs_a_step(self) -> EditBase:
        if int(self.steps * self.strength) < 1:
            raise ValueError(f"steps x strength runs no step ({self.steps} x {self.strength}): "
                             "raise steps or strength")
        return self


class Img2Img(EditBase):
    """Redraw a source image toward the prompt."""

    op: Literal["img2img"] = Field(description="img2img: redraw the whole image.")


class Inpaint(EditBase):
    """Repaint the masked part of a source image (white: repaint, black: keep)."""

    op: Literal["inpaint"] = Field(description="inpaint: repaint where the mask is white.")
    mask: ImageRef = Field(description="The mask: a stored image of the source's size or "
                           "resized to it; white repaints, black keeps.")
    strength: float = Field(1.0, gt=0.0, le=1.0, description="How far from the source to go "
                            "inside the mask (1: ignore its pixels there).")


class DiffusersOptions(BaseModel):
    """The diffusers family's options in the models file."""

    model_config = ConfigDict(extra="forbid")

    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Compute dtype. auto: float16 on CUDA; elsewhere the worker's "
        "(float64 on the CPU with GENFARM_EXACT_CPU, so bytes never depend on the batch).")
    scheduler: SchedulerName | None = Field(
        None, description="Default sampler of its jobs [default: the one in the folder].")
    safety_checker: bool = Field(
        False, description="Run the folder's safety checker (flagged images come out black and "
        "say so in their provenance); it needs safety_checker and feature_extractor folders.")
    revision: str | None = Field(
        None, min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$",
        description="Hugging Face cache folders: a ref (e.g. main) or a snapshot hash "
        "[default: refs/main, else the only snapshot].")


def batch_key(kind: str, params: Mapping[str, Any]) -> str:
    """Jobs share one pipeline call only if everything but prompts and seeds matches."""
    size = f"{params.get('width') or 'src'}x{params.get('height') or 'src'}"
    parts = [kind, str(params["model"]), str(params.get("op", "-")), size,
             f"steps={params.get('steps', 30)}", f"cfg={float(params.get('guidance', 7.5))!r}",
             f"sched={params.get('scheduler') or 'model'}"]
    if "op" in params:  # one strength per call: it sets where denoising starts
        parts.append(f"strength={float(params.get('strength', 1.0))!r}")
    return ":".join(parts)


# -- the weights folder ------------------------------------------------------------------------
def local_path(weights: str | None, model: str) -> Path:
    """The local path of a model's ``weights`` (a path or file:// URL; nothing remote)."""
    if not weights:
        raise WeightsError(f"model {model}: no weights given; a diffusers model needs a folder")
    if "://" in weights:
        url = urlparse(weights)
        if url.scheme != "file":
            raise WeightsError(f"model {model}: weights {weights}: a diffusers model loads from a "
                               "local folder only (a path or file:// URL), never downloaded")
        return Path(unquote(url.path))
    return Path(weights)


def resolve_weights(entry: ModelEntry) -> Path:
    """The folder holding the model's ``model_index.json``: the weights folder itself, or in a
    Hugging Face cache folder (``models--org--name``) the snapshot of ``options.revision``,
    else of ``refs/main``, else the only one. Raises ``WeightsError`` naming what is missing."""
    root = local_path(entry.weights, entry.name)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "no such folder"
        raise WeightsError(f"model {entry.name}: weights {root}: {what} (expected a folder "
                           "written by save_pretrained or a Hugging Face cache folder)")
    folder = root
    if not (root / "model_index.json").is_file() and (root / "snapshots").is_dir():
        folder = _snapshot(root, entry)
    if not (folder / "model_index.json").is_file():
        hint = (" (a Hugging Face cache root: point weights at its models--org--name folder)"
                if any(root.glob("models--*")) else "")
        raise WeightsError(f"model {entry.name}: weights {folder}: no model_index.json, so this "
                           f"is not a diffusers pipeline folder{hint}")
    return folder


def _snapshot(root: Path, entry: ModelEntry) -> Path:
    revision = entry.options.get("revision")
    snapshots = sorted(p.name for p in (root / "snapshots").iterdir() if p.is_dir())
    if revision is None and (root / "refs" / "main").is_file():
        revision = "main"
    if revision is not None:
        ref = root / "refs" / str(revision)
        commit = ref.read_text().strip() if ref.is_file() else str(revision)
        if commit not in snapshots:
            raise WeightsError(f"model {entry.name}: weights {root}: revision {revision} "
                               f"({commit}) is not in the cache; snapshots there: "
                               f"{', '.join(snapshots) or 'none'}")
        return root / "snapshots" / commit
    if len(snapshots) != 1:
        raise WeightsError(f"model {entry.name}: weights {root}: no refs/main and "
                           f"{len(snapshots)} snapshots ({', '.join(snapshots) or 'none'}); "
                           "set options.revision")
    return root / "snapshots" / snapshots[0]


def components(folder: Path, entry: ModelEntry, safety_checker: bool = False) -> dict[str, Any]:
    """The pipeline's ``model_index.json``, after checking that each component it needs has its
    folder (one listed as null needs none; the safety checker pair only when asked for)."""
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsError(f"model {entry.name}: {folder}/model_index.json is unreadable: "
                           f"{exc}") from exc
    if not isinstance(index, dict):
        raise WeightsError(f"model {entry.name}: {folder}/model_index.json is not an object")
    skip = set() if safety_checker else set(SAFETY_COMPONENTS)
    needed = [name for name, value in index.items()
              if not name.startswith("_") and isinstance(value, list) and len(value) == 2
              and value[0] is not None and name not in skip]
    missing = [name for name in needed if not (folder / name).is_dir()]
    if safety_checker:
        missing += [name for name in SAFETY_COMPONENTS if name not in needed]
    if missing:
        raise WeightsError(f"model {entry.name}: weights {folder}: missing component "
                           f"folder(s) {', '.join(missing)} named in model_index.json")
    return index


def weights_digest(entry: ModelEntry) -> tuple[Path, str]:
    """The resolved weights folder and its sha256 (over the sorted relative paths and each file's
    sha256: a cache snapshot and a copy of its files give the same digest)."""
    from jobs.catalog import weights_digest as folder_digest

    folder = resolve_weights(entry)
    return folder, folder_digest(folder)


SPEC = FamilySpec(
    name="diffusers",
    summary="diffusion models from local diffusers folders: text to image, img2img, inpaint",
    kinds={
        "generate": DiffusersGenerate,
        "edit": Variants("op", {"img2img": Img2Img, "inpaint": Inpaint}),
    },
    worker="workers.families.diffusers:DiffusersFamily",
    weights="required",
    options=DiffusersOptions,
    batch_key=batch_key,
    requires=("torch", "diffusers", "transformers"),
    digest=lambda entry: weights_digest(entry)[1],
    install_hint="pip install 'genfarm[diffusers]'",
)
