"""The registry of job kinds and model families, filled from entry points.

Everything here is torch-free: the CLI and the API validate manifests with it. A family is
found through the ``genfarm.models`` entry point group and a kind through ``genfarm.kinds``;
genfarm's own are registered the same way in its ``pyproject.toml``. A new kind or model family
is one module plus one entry point: nothing else in genfarm names it.
"""

from __future__ import annotations

import functools
import importlib
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from jobs.errors import GenfarmError


class RegistryError(GenfarmError):
    """A kind or family that cannot be loaded, or a name that is registered twice."""


class Params(BaseModel):
    """Base of every kind's parameters: unknown fields are errors, not silently dropped, and
    so are infinities and NaN (a CSV cell may say ``inf``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SourceRef(Params):
    """A storage reference: a line of the same manifest, a finished job, or an object in storage.
    Exactly one. Every field typed ``SourceRef`` (at any depth) is resolved inside the caller's
    project at submission: that is where isolation is enforced, once, for every kind."""

    line: int | None = Field(None, ge=1, description="A generate line of this manifest.")
    job: str | None = Field(None, pattern=r"^[0-9a-f]{32}$", description="A succeeded job's id.")
    key: str | None = Field(None, min_length=1, max_length=1024,
                            description="An object in storage, under the project's uploads.")

    @model_validator(mode="after")
    def _exactly_one(self) -> SourceRef:
        given = [n for n in ("line", "job", "key") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of line, job or key")
        return self


class ImageRef(SourceRef):
    """An image: a stored object, a succeeded job's image output, or (for families that can
    recompute one bit-exactly) a generate line of the same manifest and model."""


class GeneratedRef(SourceRef):
    """A generated object, not just its pixels: a generate line of this manifest or a succeeded
    generate job of the same model. Its generate params travel with the job (latent edits)."""

    @model_validator(mode="after")
    def _generated(self) -> GeneratedRef:
        if self.key is not None:
            raise ValueError("this op edits a generated object, and a stored image has no latent: "
                             "give a generate line or job")
        return self


class AudioRef(SourceRef):
    """An audio file in storage (WAV, MP3, Ogg, FLAC or M4A)."""

    @model_validator(mode="after")
    def _stored(self) -> AudioRef:
        if self.key is None:
            raise ValueError("audio comes from storage: give {\"key\": \"path/in/project.wav\"}")
        return self


class JobOutputRef(SourceRef):
    """One named output of a job of one kind (``of_kind``, ``output``: set by each subclass): a
    succeeded job of this project, or a line of the same manifest, which the job then waits
    for (as with ``after``). A family declares a subclass per output it reads."""

    of_kind: ClassVar[str] = ""
    output: ClassVar[str] = ""

    @model_validator(mode="after")
    def _of_a_job(self) -> JobOutputRef:
        if self.key is not None:
            raise ValueError(f"this takes the {self.output} of {self.of_kind} jobs: give "
                             "{\"line\": N} or {\"job\": ID}")
        return self


@dataclass(frozen=True)
class Variants:
    """A kind's parameters under one family: several models told apart by one field (``op``,
    ``mode``), each listed in full by ``genfarm kinds`` and the JSON schema."""

    discriminator: str
    models: Mapping[str, type[Params]]

    def select(self, record: Mapping[str, Any]) -> type[Params] | str:
        value = record.get(self.discriminator)
        if isinstance(value, str) and value in self.models:
            return self.models[value]
        return (f"{self.discriminator}: expected one of {', '.join(self.models)}, "
                f"got {value!r}")

    def adapter(self) -> TypeAdapter[Any]:
        union: Any = typing.Union[tuple(self.models.values())]  # noqa: UP007
        return TypeAdapter(Annotated[union, Field(discriminator=self.discriminator)])


Schema = type[Params] | Variants


def select_schema(schema: Schema, record: Mapping[str, Any]) -> type[Params] | str:
    return schema.select(record) if isinstance(schema, Variants) else schema


def schema_models(schema: Schema) -> list[type[Params]]:
    return list(schema.models.values()) if isinstance(schema, Variants) else [schema]


@dataclass(frozen=True)
class KindSpec:
    """A job kind: what its lines make. Its parameters come from the family of the job's model."""

    name: str
    summary: str
    long: bool = False  # long jobs (videos) travel on a queue of their own


def default_batch_key(kind: str, params: Mapping[str, Any]) -> str:
    """kind, model, variant and output size: what jobs must share to share a forward pass."""
    key = f"{kind}:{params.get('model', '')}"
    if "op" in params:
        key += f":{params['op']}"
    if "mode" in params:
        key += f":{params['mode']}"
    if "width" in params or "height" in params:
        key += f":{params.get('width') or 'src'}x{params.get('height') or 'src'}"
    return key


REFERENCE_PIXELS = 128 * 128


def default_cost(kind: str, params: Mapping[str, Any]) -> float:
    """A job's work in units of one 128x128 image: its pixels (an edit without a size takes its
    source's), times its frames, times the denoising steps it runs (steps x strength)."""
    source: Any = params.get("source")
    of_source: Any = source.get("params") if isinstance(source, dict) else None
    of_source = of_source if isinstance(of_source, dict) else {}
    width = params.get("width") or of_source.get("width") or 128
    height = params.get("height") or of_source.get("height") or 128
    units = float(width) * float(height) / REFERENCE_PIXELS
    if isinstance(params.get("frames"), int):
        units *= params["frames"]
    if isinstance(params.get("steps"), int):
        strength = params.get("strength")
        units *= max(1.0, params["steps"] * (strength if isinstance(strength, float) else 1.0))
    return units


@dataclass(frozen=True)
class FamilySpec:
    """A model family: the kinds it serves, each kind's parameters, and its worker side."""

    name: str
    summary: str
    kinds: Mapping[str, Schema]
    worker: str  # "package.module:Class", a workers.family.Family subclass, imported lazily
    weights: Literal["required", "optional", "none"] = "required"
    options: type[BaseModel] | None = None  # the family's options in the models file
    batch_key: Callable[[str, Mapping[str, Any]], str] = default_batch_key
    # how much work a job is (units of one 128x128 image), and a unit's device seconds before
    # any run (a benchmark figure; None: estimates say unknown until one has run)
    cost: Callable[[str, Mapping[str, Any]], float] = default_cost
    unit_seconds: float | None = None
    # The kind whose jobs are "generated objects": a GeneratedRef names one of them, and a source
    # given as a line of the same manifest is recomputed bit-exactly from that line's params by
    # this family (no waiting for the source job). None: such sources are refused.
    generated_kind: str | None = None
    demo: str = ""  # a small manifest `genfarm demo` runs on the first model with one
    demo_summary: str = ""
    # the weights' sha256 as the worker computes it (e.g. of the snapshot a cache folder points
    # at); None: jobs.catalog.weights_digest of the declared path
    digest: Callable[[ModelEntry], str] | None = None
    uses_device: bool = True  # False: its worker runs on the CPU whatever the device
    requires: tuple[str, ...] = ()  # Python packages its worker needs beyond genfarm's own
    install_hint: str = ""  # how to install them, e.g. "pip install 'genfarm[diffusers]'"

    def load_worker(self) -> type[Any]:
        module, _, attr = self.worker.partition(":")
        try:
            found: type[Any] = getattr(importlib.import_module(module), attr)
            return found
        except (ImportError, AttributeError) as exc:
            raise RegistryError(f"family {self.name}: cannot import its worker {self.worker} "
                                f"({type(exc).__name__}: {exc})") from exc


@dataclass(frozen=True)
class ModelEntry:
    """A named model of the models file: its family, weights and options."""

    name: str
    family: str
    weights: str | None = None  # a path, file:// or s3:// URL, or a local Hugging Face cache folder
    sha256: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    declared_in: str = "built-in"


@functools.cache
def has_refs(schema_model: type[BaseModel]) -> bool:
    """Whether any field of ``schema_model``, at any depth, is a storage reference."""
    return any(_annotation_has_refs(info.annotation) for info in schema_model.model_fields.values())


def _annotation_has_refs(annotation: Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, SourceRef):
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return has_refs(annotation)
    return any(_annotation_has_refs(a) for a in typing.get_args(annotation))


def storage_refs(value: Any, schema_model: type[BaseModel],
                 path: str = "") -> Iterator[tuple[str, dict[str, Any], type[SourceRef]]]:
    """Every (dotted path, node, reference class) in ``value`` whose field is a SourceRef, at any
    depth. The one walker that isolation, line references and resolution all use, so a field a
    family adds later cannot escape the project check."""
    if not isinstance(value, dict):
        return
    for name, info in schema_model.model_fields.items():
        if value.get(name) is not None:
            sub = f"{path}.{name}" if path else name
            yield from _walk(value[name], info.annotation, sub)


def _walk(value: Any, annotation: Any, path: str) -> Iterator[tuple[str, dict[str, Any],
                                                                   type[SourceRef]]]:
    if isinstance(annotation, type) and issubclass(annotation, SourceRef):
        if isinstance(value, dict):
            yield path, value, annotation
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield from storage_refs(value, annotation, path)
    elif isinstance(value, list | dict):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if typing.get_origin(annotation) in (list, tuple) and isinstance(value, list) and args:
            for i, item in enumerate(value):
                yield from _walk(item, args[0], f"{path}.{i}")
        else:
            for arg in args:  # Optional[...] and other unions
                yield from _walk(value, arg, path)


class Registry:
    """Kinds and families by name, loaded once from entry points."""

    def __init__(self, kinds: Mapping[str, KindSpec], families: Mapping[str, FamilySpec]) -> None:
        self.kinds = dict(kinds)
        self.families = dict(families)

    @classmethod
    def from_entry_points(cls) -> Registry:
        kinds = {spec.name: spec for spec in _load_group("genfarm.kinds", KindSpec)}
        families = {spec.name: spec for spec in _load_group("genfarm.models", FamilySpec)}
        for fam in families.values():
            for kind in fam.kinds:
                if kind not in kinds:
                    raise RegistryError(f"family {fam.name} serves kind {kind!r}, which no "
                                        "genfarm.kinds entry point registers")
        return cls(kinds, families)


_Spec = typing.TypeVar("_Spec", KindSpec, FamilySpec)


def _load_group(group: str, want: type[_Spec]) -> list[_Spec]:
    found: dict[str, _Spec] = {}
    for ep in entry_points(group=group):
        try:
            spec = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin is named, with its error
            raise RegistryError(f"{group} entry point {ep.name!r} ({ep.value}) failed to "
                                f"import: {type(exc).__name__}: {exc}") from exc
        if not isinstance(spec, want):
            raise RegistryError(f"{group} entry point {ep.name!r} is a {type(spec).__name__}, "
                                f"not a {want.__name__}")
        if spec.name in found and found[spec.name] is not spec:
            raise RegistryError(f"{group}: {spec.name!r} is registered twice")
        found[spec.name] = spec
    return list(found.values())


_registry: Registry | None = None


def registry() -> Registry:
    """The process-wide registry (entry points are read once)."""
    global _registry
    if _registry is None:
        _registry = Registry.from_entry_points()
    return _registry
