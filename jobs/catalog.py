"""Named models: the models file (``GENFARM_MODELS_FILE``, TOML) declares each model's family,
weights, optional sha256 pin and family options. The built-in ``aether`` and ``noop`` are
entries by default. Torch-free: submission checks a job's ``model`` here, and workers route by it.

    [defaults]                      # optional: the model a line gets when it names none
    generate = "sd-tiny"

    [models.sd-tiny]
    family = "diffusers"
    weights = "/models/sd-tiny"     # a path (relative to this file), file:// or s3:// URL,
    sha256 = "..."                  # or a local Hugging Face cache folder; the pin is optional
    options = { dtype = "float16", scheduler = "ddim" }
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from jobs.errors import GenfarmError
from jobs.registry import FamilySpec, ModelEntry, Registry, registry

MODEL_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
ENTRY_KEYS = {"family", "weights", "sha256", "options"}


class ModelsFileError(GenfarmError):
    """The models file cannot be read, or a model in it is declared wrongly."""


def queue_name(model: str, long: bool) -> str:
    """Each model has its own queue; long jobs (videos) one beside it, so they never hold up
    a model's short passes."""
    return f"{model}.long" if long else model


@dataclass
class Catalog:
    """The models this farm knows, with the registry of kinds and families behind them."""

    registry: Registry
    models: dict[str, ModelEntry]
    defaults: dict[str, str] = field(default_factory=dict)
    source: str = "built-in"

    def family(self, model: str) -> FamilySpec:
        return self.registry.families[self.models[model].family]

    def kinds_of(self, model: str) -> list[str]:
        return list(self.family(model).kinds)

    def serving(self, kind: str) -> list[str]:
        return [name for name in self.models if kind in self.family(name).kinds]

    def default_model(self, kind: str) -> str | None:
        if kind in self.defaults:
            return self.defaults[kind]
        serving = self.serving(kind)
        return serving[0] if serving else None

    def queue(self, kind: str, model: str) -> str:
        return queue_name(model, self.registry.kinds[kind].long)

    def queues(self, models: list[str] | None = None) -> list[str]:
        """Every queue of ``models`` (default: all)."""
        out = []
        for name in models or list(self.models):
            for kind in self.kinds_of(name):
                q = self.queue(kind, name)
                if q not in out:
                    out.append(q)
        return out


BUILTIN_MODELS = Path(__file__).parent / "families" / "models.toml"


def load_catalog(settings: Any, reg: Registry | None = None) -> Catalog:
    """The built-in models plus those of ``settings.models_file``; raise naming every problem."""
    reg = reg or registry()
    builtin = _read(BUILTIN_MODELS, reg, {})
    path: Path | None = getattr(settings, "models_file", None)
    return builtin if path is None else _read(Path(path), reg, builtin.models)


def _read(path: Path, reg: Registry, models: dict[str, ModelEntry]) -> Catalog:
    models = dict(models)
    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelsFileError(f"models file {path}: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ModelsFileError(f"models file {path}: not valid TOML: {exc}") from exc
    problems: list[str] = []
    unknown = set(doc) - {"models", "defaults"}
    if unknown:
        problems.append(f"unknown table(s) {', '.join(sorted(unknown))}; expected [models.NAME] "
                        "and [defaults]")
    declared = doc.get("models", {})
    if not isinstance(declared, dict):
        problems.append("models: expected tables [models.NAME]")
        declared = {}
    for name, body in declared.items():
        entry, problem = _entry(name, body, Path(path), reg)
        if problem:
            problems.append(f"model {name!r}: {problem}")
        elif entry is not None:
            models[name] = entry
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict):
        problems.append("defaults: expected a table of kind = \"model\"")
        defaults = {}
    for kind, model in defaults.items():
        if kind not in reg.kinds:
            problems.append(f"defaults: unknown kind {kind!r}; known: {', '.join(reg.kinds)}")
        elif model not in models:
            problems.append(f"defaults: {kind} = {model!r} is not a declared model")
        elif kind not in reg.families[models[model].family].kinds:
            problems.append(f"defaults: model {model!r} does not serve {kind} jobs")
    if problems:
        raise ModelsFileError(f"models file {path}: " + "; ".join(problems))
    return Catalog(reg, models, dict(defaults), str(path))


def _entry(name: str, body: Any, path: Path, reg: Registry) -> tuple[ModelEntry | None, str]:
    if not MODEL_NAME_RE.fullmatch(name):
        return None, "a model name takes 1-63 characters of a-z, 0-9, '.', '-' and '_'"
    if not isinstance(body, dict):
        return None, "expected a table"
    extra = set(body) - ENTRY_KEYS
    if extra:
        return None, f"unknown key(s) {', '.join(sorted(extra))}; expected {', '.join(sorted(ENTRY_KEYS))}"
    family = body.get("family")
    if not isinstance(family, str):
        return None, "family: required (e.g. family = \"diffusers\")"
    if family not in reg.families:
        return None, f"unknown family {family!r}; installed: {', '.join(sorted(reg.families))}"
    spec = reg.families[family]
    weights = body.get("weights")
    if weights is not None and not isinstance(weights, str):
        return None, "weights: expected a path or URL"
    if spec.weights == "required" and not weights:
        return None, f"weights: required for the {family} family"
    if weights and "://" not in weights and not Path(weights).is_absolute():
        weights = str((path.parent / weights).resolve())
    sha = body.get("sha256")
    if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
        return None, "sha256: expected 64 lowercase hex digits"
    options = body.get("options", {})
    if not isinstance(options, dict):
        return None, "options: expected a table"
    if spec.options is not None:
        try:
            options = spec.options.model_validate(options).model_dump(mode="json")
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            return None, f"options.{where}: {err['msg']}"
    elif options:
        return None, f"options: the {family} family takes none"
    return ModelEntry(name, family, weights, sha, options, str(path)), ""


# -- what `genfarm models` and a worker's start check ------------------------------------------
def weights_digest(path: Path) -> str:
    """sha256 of a weights file, or of a folder: over its sorted relative paths and each file's
    sha256 (so the same files give the same digest wherever the folder lies)."""
    if path.is_file():
        return _file_sha256(path)
    outer = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        outer.update(item.relative_to(path).as_posix().encode() + b"\0")
        outer.update(_file_sha256(item).encode() + b"\n")
    return outer.hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelCheck:
    entry: ModelEntry
    kinds: list[str]
    digest: str | None
    problems: list[str]

    @property
    def loadable(self) -> bool:
        return not self.problems


def check_model(catalog: Catalog, name: str, *, digest: bool = True) -> ModelCheck:
    """Whether this machine can load ``name``: its worker imports, its weights are there and
    match their pin. Nothing is imported beyond finding the modules."""
    entry = catalog.models[name]
    spec = catalog.family(name)
    problems: list[str] = []
    module = spec.worker.partition(":")[0]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        problems.append(f"its worker module {module} is not installed")
    for needed in spec.requires:
        if importlib.util.find_spec(needed) is None:
            problems.append(f"needs the {needed} package ({spec.install_hint or 'pip install ' + needed})")
    sha = None
    weights = entry.weights
    if weights and weights.startswith("file://"):
        weights = weights[len("file://"):]
    if weights and "://" not in weights:
        local = Path(weights)
        if not local.exists():
            problems.append(f"weights {entry.weights}: no such file or folder")
        elif digest:
            try:
                sha = spec.digest(entry) if spec.digest else weights_digest(local)
            except GenfarmError as exc:
                problems.append(str(exc))
            if sha and entry.sha256 and sha != entry.sha256:
                problems.append(f"weights {entry.weights}: sha256 {sha} is not the pinned "
                                f"{entry.sha256}")
    return ModelCheck(entry, list(spec.kinds), sha, problems)


def iter_checks(catalog: Catalog, digest: bool = True) -> Iterator[ModelCheck]:
    for name in catalog.models:
        yield check_model(catalog, name, digest=digest)
