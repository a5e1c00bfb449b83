"""The built-in ``aether`` family: a 3D-aware triplane generator. Its kinds: generate (seed,
size, truncation, camera), edit (latent directions, style mixing, camera re-render, image
operations) and video (orbit, interpolation, cuts on the music's beat grid). Torch-free: the
worker side is ``workers.families.aether``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jobs.families.audio import StructureRef
from jobs.registry import (
    AudioRef,
    FamilySpec,
    GeneratedRef,
    ImageRef,
    Params,
    Variants,
    default_batch_key,
)

MAX_SIDE = 1024
CUT_EVERY = ("beat", "bar", "2bars", "4bars")  # beats videos: the cut grid, in bars


class Camera(Params):
    yaw: float = Field(0.0, ge=-180.0, le=180.0, description="Camera yaw in degrees.")
    pitch: float = Field(0.0, ge=-89.0, le=89.0, description="Camera pitch in degrees.")
    radius: float = Field(2.7, ge=1.5, le=6.0, description="Camera distance from the object.")
    fov: float = Field(30.0, ge=5.0, le=90.0, description="Vertical field of view in degrees.")


class Generate(Camera):
    """One image from the generator: a seed, a size, a truncation and a camera."""

    model: str = Field(description="The model (see `genfarm models`).")
    seed: int = Field(ge=0, lt=2**32, description="Latent seed; same seed, same image.")
    width: int = Field(128, ge=16, le=MAX_SIDE, multiple_of=8, description="Output width in pixels.")
    height: int = Field(128, ge=16, le=MAX_SIDE, multiple_of=8,
                        description="Output height in pixels.")
    truncation: float = Field(
        0.7, ge=0.0, le=1.0, description="Pull toward the mean latent (0 = mean, 1 = none).")
    save_latent: bool = Field(False, description="Also store the latent w (latent.npy).")


class EditBase(Params):
    model: str = Field(description="The model (see `genfarm models`).")
    width: int | None = Field(None, ge=16, le=MAX_SIDE, multiple_of=8,
                              description="Output width [default: the source's].")
    height: int | None = Field(None, ge=16, le=MAX_SIDE, multiple_of=8,
                               description="Output height [default: the source's].")


class LatentEdit(EditBase):
    """Move the source's latent along a principal direction of w space."""

    op: Literal["latent"] = Field(description="latent: move along a latent direction.")
    source: GeneratedRef = Field(description="The generated object to edit: a line or a job.")
    direction: int = Field(0, ge=0, lt=8, description="Which principal direction (0 = strongest).")
    strength: float = Field(3.0, ge=-20.0, le=20.0, description="How far to move.")


class StyleMix(EditBase):
    """Take coarse (shape) or fine (appearance) styles from another seed."""

    op: Literal["style_mix"] = Field(description="style_mix: styles from another seed.")
    source: GeneratedRef = Field(description="The generated object to edit: a line or a job.")
    mix_seed: int = Field(ge=0, lt=2**32, description="The seed whose styles are taken.")
    layers: Literal["coarse", "fine"] = Field("fine", description="coarse = shape, fine = colour.")


class Rerender(EditBase, Camera):
    """The same object from another camera: a 3D edit."""

    op: Literal["rerender"] = Field(description="rerender: the same object, another camera.")
    source: GeneratedRef = Field(description="The generated object to edit: a line or a job.")


class ImageOp(Params):
    """One image operation; exactly one field."""

    resize: list[int] | None = Field(None, min_length=2, max_length=2,
                                     description="[width, height], 16..2048.")
    crop: list[int] | None = Field(None, min_length=4, max_length=4,
                                   description="[x, y, width, height].")
    flip: Literal["horizontal", "vertical"] | None = Field(None, description="Mirror the image.")
    rotate: float | None = Field(None, ge=-360, le=360, description="Degrees, counter-clockwise.")
    brightness: float | None = Field(None, ge=-1, le=1, description="Added to every channel.")
    contrast: float | None = Field(None, ge=0, le=4, description="Contrast factor.")
    saturation: float | None = Field(None, ge=0, le=4, description="Saturation factor.")
    hue: float | None = Field(None, ge=-0.5, le=0.5, description="Fraction of a full turn.")
    gamma: float | None = Field(None, ge=0.1, le=5, description="Gamma exponent.")
    blur: float | None = Field(None, ge=0.1, le=20, description="Gaussian sigma in pixels.")
    sharpen: float | None = Field(None, ge=0, le=5, description="Sharpness factor.")
    color_transfer: ImageRef | None = Field(None, description="Match another image's colours.")

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


class ImageEdit(EditBase):
    """Image operations on any image, batched on the device."""

    op: Literal["image"] = Field(description="image: a list of image operations.")
    source: ImageRef = Field(description="Any image: a stored key, a job, or a generate line.")
    ops: list[ImageOp] = Field(min_length=1, max_length=16, description="Applied in order.")


class Video(Camera):
    """A video: an orbit around an object, an interpolation between seeds, or cuts on beats."""

    model: str = Field(description="The model (see `genfarm models`).")
    mode: Literal["orbit", "interpolate", "beats"] = Field(description="What the video shows.")
    seed: int | None = Field(None, ge=0, lt=2**32, description="orbit, beats: the first object.")
    seeds: list[int] | None = Field(None, min_length=2, max_length=64,
                                    description="interpolate: the seeds to pass through.")
    source: GeneratedRef | None = Field(None, description="orbit: a generate job to start from.")
    truncation: float = Field(0.7, ge=0.0, le=1.0, description="As for generate.")
    frames: int = Field(48, ge=2, le=3000, description="orbit, interpolate: frame count.")
    fps: int = Field(24, ge=1, le=60, description="Frames per second.")
    width: int = Field(128, ge=16, le=512, multiple_of=16, description="Frame width.")
    height: int = Field(128, ge=16, le=512, multiple_of=16, description="Frame height.")
    yaw_from: float = Field(-180.0, ge=-720, le=720, description="orbit: first yaw.")
    yaw_to: float = Field(180.0, ge=-720, le=720, description="orbit: last yaw.")
    audio: AudioRef | None = Field(None, description="beats: an audio file in storage.")
    on_beat: Literal["cut", "move"] = Field(
        "cut", description="beats: cut to another look, or only turn the camera.")
    cut_every: str | dict[str, str] | None = Field(
        None, description="beats: cut every beat, bar, 2bars or 4bars; or per section label, "
        "e.g. {\"A\": \"bar\", \"B\": \"beat\"} (labels not named: beat) [default: beat].")
    look: Literal["section", "cut"] | None = Field(
        None, description="beats: section = one look per section label, each cut turns the "
        "camera (a chorus looks like the other choruses); cut = a new seed at every cut "
        "[default: section].")
    structure: StructureRef | None = Field(
        None, description="beats: the music's structure from an audio job ({\"line\": N} or "
        "{\"job\": ID}) [default: analyse the audio here].")
    chunk_frames: int = Field(48, ge=4, le=512, description="Frames per resumable chunk.")

    @field_validator("cut_every", mode="before")
    @classmethod
    def _cut_rule(cls, value: Any) -> Any:
        rules = ", ".join(CUT_EVERY)
        if value is None or (isinstance(value, str) and value in CUT_EVERY):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"expected one of {rules}, or {{\"LABEL\": rule}} per section "
                             f"label; got {value!r}"[:200])
        for label, rule in value.items():
            if not 1 <= len(label) <= 8 or not label.isalnum():
                raise ValueError(f"section labels are 1 to 8 letters or digits, got {label!r}")
            if not isinstance(rule, str) or rule not in CUT_EVERY:
                raise ValueError(f"section {label}: expected one of {rules}, got {rule!r}"[:200])
        return value

    @model_validator(mode="after")
    def _mode_fields(self) -> Video:
        if self.mode == "interpolate" and not self.seeds:
            raise ValueError("interpolate needs seeds: a list of at least two")
        if self.mode in ("orbit", "beats") and self.seed is None and self.source is None:
            raise ValueError(f"{self.mode} needs a seed or a source")
        if self.mode == "beats" and self.audio is None:
            raise ValueError("beats needs audio: {\"key\": \"path/in/project.wav\"}")
        if self.mode != "beats":
            given = [n for n in ("cut_every", "look", "structure") if getattr(self, n) is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: only for mode beats")
        return self


class Options(BaseModel):
    """aether's options in the models file."""

    model_config = ConfigDict(extra="forbid")

    profile: Literal["tiny", "default", "large"] | None = Field(
        None, description="Network size [default: GENFARM_MODEL_PROFILE].")
    autocast: Literal["auto", "bfloat16", "float16", "off"] = Field(
        "auto", description="Mixed precision on CUDA (auto: bfloat16 where the GPU has it, "
        "else float16); the CPU computes in its own dtype (GENFARM_EXACT_CPU).")
    compile: bool = Field(
        False, description="torch.compile the image synthesis (each pass size compiles once "
        "per process, on first use).")


def batch_key(kind: str, params: Any) -> str:
    if kind == "edit" and params.get("op") == "image":
        ops = "+".join(next(k for k, v in op.items() if v is not None) for op in params["ops"])
        return f"edit:{params['model']}:image:{ops}"
    return default_batch_key(kind, params)


DEMO = """\
{"kind": "generate", "seed": {"range": [0, 4]}, "yaw": [-30, 0, 30], "width": 128, "height": 128}
{"kind": "generate", "seed": 42, "count": 4, "truncation": 0.5, "pitch": 15, "width": 128, "height": 128}
{"kind": "edit", "op": "rerender", "source": {"line": 2}, "yaw": 60, "pitch": 15}
{"kind": "video", "mode": "orbit", "seed": 7, "frames": 48, "fps": 24, "pitch": 10}
"""

SPEC = FamilySpec(
    name="aether",
    summary="the built-in 3D-aware triplane generator: images, edits and orbit videos",
    kinds={
        "generate": Generate,
        "edit": Variants("op", {"latent": LatentEdit, "style_mix": StyleMix,
                                "rerender": Rerender, "image": ImageEdit}),
        "video": Video,
    },
    worker="workers.families.aether:AetherFamily",
    weights="optional",
    options=Options,
    batch_key=batch_key,
    generated_kind="generate",
    unit_seconds=1 / 40,  # benchmarks/models.py: `default` makes 40 128x128 images/s, 2-core CPU
    requires=("torch", "safetensors", "kornia", "av"),
    install_hint="pip install 'genfarm[worker]'",
    demo=DEMO,
    demo_summary="generate, camera re-render edits, an orbit video",
)
