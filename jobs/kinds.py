"""Job kinds: each kind's parameter schema, its queue, and its batch key.

A batch key names everything that must match for jobs to share one forward
pass (kind, model, output shape). No torch here: workers own the models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Models a worker can run, with the largest output side each supports.
MODELS: dict[str, int] = {
    "aether": 1024,  # the built-in 3D-aware generator
}


class Params(BaseModel):
    """Base of every kind's parameters: unknown fields are errors, not silently dropped."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class CameraParams(Params):
    yaw: float = Field(0.0, ge=-180.0, le=180.0, description="Camera yaw in degrees.")
    pitch: float = Field(0.0, ge=-89.0, le=89.0, description="Camera pitch in degrees.")
    radius: float = Field(2.7, ge=1.5, le=6.0, description="Camera distance from the object.")
    fov: float = Field(30.0, ge=5.0, le=90.0, description="Vertical field of view in degrees.")


class GenerateParams(CameraParams):
    """One image from the generator: a seed, a size, a truncation and a camera."""

    seed: int = Field(ge=0, lt=2**32, description="Latent seed; same seed, same image.")
    width: int = Field(128, ge=16, le=1024, multiple_of=8, description="Output width in pixels.")
    height: int = Field(128, ge=16, le=1024, multiple_of=8, description="Output height in pixels.")
    truncation: float = Field(
        0.7, ge=0.0, le=1.0, description="Pull toward the mean latent (0 = mean, 1 = none)."
    )
    save_latent: bool = Field(False, description="Also store the latent w (latent.npy).")
    model: str = Field("aether", description="Generator model name.")

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in MODELS:
            raise ValueError(f"unknown model {value!r}; known: {', '.join(sorted(MODELS))}")
        return value


class NoopParams(Params):
    """A job that runs no model and writes a tiny output: for smoke tests, overhead checks and
    failure drills (a job that fails on purpose shows how the farm isolates and retries it)."""

    payload_bytes: int = Field(64, ge=1, le=1_048_576, description="Size of the output object.")
    tag: int = Field(0, ge=0, description="Free number, e.g. to sweep many distinct jobs.")
    fail: Literal["never", "always", "transient"] = Field(
        "never", description="Drill: 'always' breaks every pass it is in (a poison job); "
        "'transient' fails its first attempt with a retryable error.")
    oom_above: int = Field(0, ge=0, description="Drill: a pass of more jobs than this runs out "
                                                "of memory (0: never).")


class SourceRef(Params):
    """Where an edit or a video starts: a line of the same manifest, a finished job, or an
    image in storage. Exactly one."""

    line: int | None = Field(None, ge=1, description="A generate line of this manifest.")
    job: str | None = Field(None, pattern=r"^[0-9a-f]{32}$", description="A succeeded job's id.")
    key: str | None = Field(None, min_length=1, max_length=1024,
                            description="An object in storage (its key under the prefix).")
    # filled in by genfarm when it resolves the reference: never given by the user
    params: dict[str, Any] | None = Field(None, exclude=False, json_schema_extra={"readOnly": True})
    sha256: str | None = Field(None, json_schema_extra={"readOnly": True})

    @model_validator(mode="after")
    def _exactly_one(self) -> SourceRef:
        given = [n for n in ("line", "job", "key") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of line, job or key")
        return self


class EditBase(Params):
    source: SourceRef
    width: int | None = Field(None, ge=16, le=1024, multiple_of=8,
                              description="Output width [default: the source's].")
    height: int | None = Field(None, ge=16, le=1024, multiple_of=8,
                               description="Output height [default: the source's].")
    model: str = "aether"


class LatentEdit(EditBase):
    """Move the source's latent along a principal direction of w space."""

    op: Literal["latent"]
    direction: int = Field(0, ge=0, lt=8, description="Which principal direction (0 = strongest).")
    strength: float = Field(3.0, ge=-20.0, le=20.0, description="How far to move.")


class StyleMix(EditBase):
    """Take coarse (shape) or fine (appearance) styles from another seed."""

    op: Literal["style_mix"]
    mix_seed: int = Field(ge=0, lt=2**32)
    layers: Literal["coarse", "fine"] = "fine"


class Rerender(EditBase, CameraParams):
    """The same object from another camera: a 3D edit."""

    op: Literal["rerender"]


ImageOpName = Literal["resize", "crop", "flip", "rotate", "brightness", "contrast", "saturation",
                      "hue", "gamma", "blur", "sharpen", "color_transfer"]


class ImageOp(Params):
    """One image operation; exactly one field."""

    resize: list[int] | None = Field(None, min_length=2, max_length=2,
                                     description="[width, height], 16..2048.")
    crop: list[int] | None = Field(None, min_length=4, max_length=4,
                                   description="[x, y, width, height].")
    flip: Literal["horizontal", "vertical"] | None = None
    rotate: float | None = Field(None, ge=-360, le=360, description="Degrees, counter-clockwise.")
    brightness: float | None = Field(None, ge=-1, le=1, description="Added to every channel.")
    contrast: float | None = Field(None, ge=0, le=4)
    saturation: float | None = Field(None, ge=0, le=4)
    hue: float | None = Field(None, ge=-0.5, le=0.5, description="Fraction of a full turn.")
    gamma: float | None = Field(None, ge=0.1, le=5)
    blur: float | None = Field(None, ge=0.1, le=20, description="Gaussian sigma in pixels.")
    sharpen: float | None = Field(None, ge=0, le=5)
    color_transfer: SourceRef | None = Field(None, description="Match another image's colours.")

    @model_validator(mode="after")
    def _exactly_one(self) -> ImageOp:
        given = [n for n in type(self).model_fields if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"each op takes exactly one of {', '.join(type(self).model_fields)}")
        if self.resize and not all(16 <= v <= 2048 for v in self.resize):
            raise ValueError("resize takes [width, height] from 16 to 2048")
        if self.crop and (min(self.crop) < 0 or min(self.crop[2:]) < 8):
            raise ValueError("crop takes [x, y, width, height], x, y >= 0, sides >= 8")
        return self

    @property
    def name(self) -> str:
        return next(n for n in type(self).model_fields if getattr(self, n) is not None)


class ImageEdit(EditBase):
    """Image operations on any image, batched on the device."""

    op: Literal["image"]
    ops: list[ImageOp] = Field(min_length=1, max_length=16)


class VideoParams(CameraParams):
    """A video: an orbit around an object, an interpolation between seeds, or cuts on beats."""

    mode: Literal["orbit", "interpolate", "beats"]
    seed: int | None = Field(None, ge=0, lt=2**32, description="orbit, beats: the first object.")
    seeds: list[int] | None = Field(None, min_length=2, max_length=64,
                                    description="interpolate: the seeds to pass through.")
    source: SourceRef | None = Field(None, description="orbit: a generate job to start from.")
    truncation: float = Field(0.7, ge=0.0, le=1.0)
    frames: int = Field(48, ge=2, le=3000, description="orbit, interpolate: frame count.")
    fps: int = Field(24, ge=1, le=60)
    width: int = Field(128, ge=16, le=512, multiple_of=16)
    height: int = Field(128, ge=16, le=512, multiple_of=16)
    yaw_from: float = Field(-180.0, ge=-720, le=720, description="orbit: first yaw.")
    yaw_to: float = Field(180.0, ge=-720, le=720, description="orbit: last yaw.")
    audio: SourceRef | None = Field(None, description="beats: an audio file in storage.")
    on_beat: Literal["cut", "move"] = Field("cut", description="beats: cut to a new seed, or turn.")
    chunk_frames: int = Field(48, ge=4, le=512, description="Frames per resumable chunk.")
    model: str = "aether"

    @model_validator(mode="after")
    def _mode_fields(self) -> VideoParams:
        if self.mode == "interpolate" and not self.seeds:
            raise ValueError("interpolate needs seeds: a list of at least two")
        if self.mode in ("orbit", "beats") and self.seed is None and self.source is None:
            raise ValueError(f"{self.mode} needs a seed or a source")
        if self.mode == "beats" and (self.audio is None or self.audio.key is None):
            raise ValueError("beats needs audio: {\"key\": \"path/in/storage.wav\"}")
        return self


EDIT_OPS: dict[str, type[Params]] = {"latent": LatentEdit, "style_mix": StyleMix,
                                     "rerender": Rerender, "image": ImageEdit}


def _edit_schema(record: dict[str, Any]) -> type[Params] | str:
    op = record.get("op")
    if op not in EDIT_OPS:
        return f"op: expected one of {', '.join(EDIT_OPS)}, got {op!r}"
    return EDIT_OPS[op]


def _edit_key(p: dict[str, Any]) -> str:
    size = f"{p.get('width') or 'src'}x{p.get('height') or 'src'}"
    if p["op"] == "image":
        return "edit:image:" + "+".join(next(k for k, v in op.items() if v is not None)
                                        for op in p["ops"])
    return f"edit:{p['op']}:{p['model']}:{size}"


@dataclass(frozen=True)
class Kind:
    name: str
    params: type[Params]
    queue: str
    batch_key: Callable[[dict[str, Any]], str]
    summary: str
    # which schema a record takes, where a kind has several (edit ops); or an error message
    select: Callable[[dict[str, Any]], type[Params] | str] | None = None

    def schema_for(self, record: dict[str, Any]) -> type[Params] | str:
        return self.select(record) if self.select else self.params


KINDS: dict[str, Kind] = {
    k.name: k
    for k in [
        Kind(
            "generate",
            GenerateParams,
            queue="generate",
            batch_key=lambda p: f"generate:{p['model']}:{p['width']}x{p['height']}",
            summary="images from the 3D-aware generator (seed, size, truncation, camera)",
        ),
        Kind(
            "edit",
            LatentEdit,
            queue="generate",
            batch_key=_edit_key,
            summary="edits of a generated or stored image: op = latent | style_mix | rerender | image",
            select=_edit_schema,
        ),
        Kind(
            "video",
            VideoParams,
            queue="video",
            batch_key=lambda p: f"video:{p['mode']}:{p['model']}:{p['width']}x{p['height']}",
            summary="MP4 videos: mode = orbit | interpolate | beats (audio from storage)",
        ),
        Kind(
            "noop",
            NoopParams,
            queue="generate",
            batch_key=lambda p: "noop",
            summary="no model, a tiny output: smoke tests and overhead measurement",
        ),
    ]
}

# Fields every manifest line may carry, whatever its kind.
COMMON_FIELDS = {"kind", "priority", "max_attempts", "count"}
