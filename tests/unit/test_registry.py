"""Kinds and model families come from entry points; the models file names models. No kind, family
or model name is written anywhere in genfarm outside its own module, so a new one is one module and
one entry point."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from jobs.catalog import ModelsFileError, check_model, load_catalog, weights_digest
from jobs.errors import ManifestError
from jobs.manifest import parse_manifest
from jobs.registry import registry
from jobs.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("jobs", "workers", "storage", "cli", "api")


def own_modules(name: str) -> set[Path]:
    """The files that may name ``name``: its spec module and its worker module or package."""
    mine = {ROOT / "jobs" / "families" / f"{name}.py", ROOT / "workers" / "families" / f"{name}.py"}
    mine |= set((ROOT / "workers" / "families" / name).glob("*.py"))
    return mine


def docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes of a module, its classes and functions (prose, not code)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


MEDIA_TYPE = re.compile(r"(application|audio|image|text|video)/[a-z0-9.+%-]*")


def field_keys(tree: ast.AST, fields: set[str]) -> set[int]:
    """ids of the strings that read or write a parameter field by name (``params["audio"]``,
    ``params.get("audio")``, ``{"audio": ...}``) where that name is a field of some kind's
    schema: a kind may share its name with another kind's field (``audio``)."""
    out = set()
    for node in ast.walk(tree):
        keys: list[ast.expr | None] = []
        if isinstance(node, ast.Subscript):
            keys = [node.slice]
        elif isinstance(node, ast.Dict):
            keys = list(node.keys)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("get", "pop", "setdefault") and node.args):
            keys = [node.args[0]]
        out |= {id(k) for k in keys if isinstance(k, ast.Constant) and k.value in fields}
    return out


def hard_coded(path: Path, names: dict[str, set[Path]], fields: set[str] | None = None,
               ) -> list[str]:
    """Every string in ``path``'s code that holds one of ``names`` as a word, whole
    (``"video"``) or composed (``"aether.long"``, an f-string's ``f"{x}-noop"``), unless ``path``
    is one of that name's own modules. Prose is not code: docstrings, and the help texts and
    messages that explain genfarm in words (strings with a space), may name the built-ins; a
    media type (``video/mp4``, ``video/%``) names a format, not a kind; and a key that is one of
    ``fields`` (a schema's field names) names that field."""
    tree = ast.parse(path.read_text(), str(path))
    skip = docstrings(tree) | field_keys(tree, fields or set())
    words = {name: re.compile(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])")
             for name in names}
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
                and not re.search(r"\s", node.value) and not MEDIA_TYPE.fullmatch(node.value)):
            for name, word in words.items():
                if path not in names[name] and word.search(node.value):
                    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                    found.append(f"{where}:{node.lineno}: {node.value!r}")
    return found


def test_no_kind_family_or_model_name_is_written_outside_its_own_module() -> None:
    reg = registry()
    catalog = load_catalog(Settings())
    names: dict[str, set[Path]] = {}
    for kind in reg.kinds:
        names[kind] = {ROOT / "jobs" / "kinds.py"}
    for family in reg.families:
        names.setdefault(family, set()).update(own_modules(family))
    for model in catalog.models:
        names.setdefault(model, set()).update(own_modules(catalog.models[model].family))
    for fam_name, fam in reg.families.items():  # a family may name the kinds it serves
        for kind in fam.kinds:
            names[kind] |= own_modules(fam_name)
    from jobs.registry import schema_models

    fields = {name for fam in reg.families.values() for schema in fam.kinds.values()
              for model in schema_models(schema) for name in model.model_fields}
    offenders = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            offenders += hard_coded(path, names, fields)
    assert not offenders, "names hard-coded outside their own module:\n" + "\n".join(offenders)


def test_the_check_would_find_a_hard_coded_name(tmp_path: Path) -> None:
    mod = tmp_path / "mod.py"
    mod.write_text('"""Serves video and aether jobs (prose)."""\n'
                   'def f(kind, x):\n'
                   '    """For aether."""\n'
                   '    if kind == "video":\n'
                   '        return "aether.long", f"{x}-noop", "videos", "my_aether"\n'
                   '    raise ValueError("explains: the noop kind")\n')
    names = {"video": set(), "aether": set(), "noop": set()}
    found = [line.split(": ", 1)[1] for line in hard_coded(mod, names)]
    assert sorted(found) == sorted(["'video'", "'aether.long'", "'-noop'"]), found
    assert hard_coded(mod, {"aether": {mod}}) == []  # in its own module, allowed
    mod.write_text('def f(params):\n'
                   '    return params["audio"], params.get("audio"), {"audio": 1}, "audio"\n')
    found = [line.split(": ", 1)[1] for line in hard_coded(mod, {"audio": set()}, {"audio"})]
    assert found == ["'audio'"], found  # the field read by name is not the kind; the last is


def test_built_ins_are_registered_like_plugins() -> None:
    reg = registry()
    assert {"generate", "edit", "video", "noop", "audio"} <= set(reg.kinds)
    assert {"aether", "noop", "audio"} <= set(reg.families)
    for fam in reg.families.values():
        assert ":" in fam.worker and fam.kinds
        for kind in fam.kinds:
            assert kind in reg.kinds


def test_models_file_declares_named_models(tmp_path: Path) -> None:
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"not really weights")
    models = tmp_path / "models.toml"
    models.write_text(f'[defaults]\ngenerate = "hero"\n\n[models.hero]\nfamily = "aether"\n'
                      f'weights = "w.safetensors"\nsha256 = "{weights_digest(weights)}"\n'
                      'options = { profile = "tiny" }\n')
    catalog = load_catalog(Settings(models_file=models))
    assert catalog.models["hero"].weights == str(weights)  # relative to the models file
    assert catalog.default_model("generate") == "hero"
    assert catalog.queues(["hero"]) == ["hero", "hero.long"]
    check = check_model(catalog, "hero")
    assert check.loadable and check.digest == weights_digest(weights)
    specs = parse_manifest('{"kind": "generate", "seed": 1}\n{"kind": "video", "mode": "orbit", '
                           '"seed": 1, "model": "aether"}', catalog=catalog)
    assert [(s.params["model"], s.queue) for s in specs] == [("hero", "hero"),
                                                             ("aether", "aether.long")]
    weights.write_bytes(b"other bytes")
    assert "not the pinned" in check_model(catalog, "hero").problems[0]


@pytest.mark.parametrize("body,expected", [
    ('[models.x]\nfamily = "nope"\n', "unknown family 'nope'"),
    ('[models.x]\nweights = "a"\n', "family: required"),
    ('[models.x]\nfamily = "aether"\nsha256 = "abc"\n', "64 lowercase hex"),
    ('[models.x]\nfamily = "aether"\ncolour = 1\n', "unknown key(s) colour"),
    ('[models.x]\nfamily = "noop"\noptions = { a = 1 }\n', "takes none"),
    ('[models.x]\nfamily = "aether"\noptions = { autocast = "fp8" }\n',
     "options.autocast: Input should be 'auto', 'bfloat16', 'float16' or 'off'"),
    ('[models.x]\nfamily = "aether"\noptions = { compile = "yes please" }\n',
     "options.compile: Input should be a valid boolean"),
    ('[models."Bad Name"]\nfamily = "aether"\n', "a model name takes"),
    ('[defaults]\nvideo = "noop"\n', "does not serve video"),
    ('[models.x\n', "not valid TOML"),
])
def test_models_file_mistakes_name_the_model(tmp_path: Path, body: str, expected: str) -> None:
    models = tmp_path / "models.toml"
    models.write_text(body)
    with pytest.raises(ModelsFileError) as info:
        load_catalog(Settings(models_file=models))
    assert expected in str(info.value) and str(models) in str(info.value)


def test_missing_weights_make_a_model_unloadable_here(tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text('[models.x]\nfamily = "aether"\nweights = "/nowhere/w.safetensors"\n')
    check = check_model(load_catalog(Settings(models_file=models)), "x")
    assert not check.loadable and "no such file" in check.problems[0]


def test_a_job_names_a_model_that_serves_its_kind() -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest('{"kind": "video", "mode": "orbit", "seed": 1, "model": "noop"}\n'
                       '{"kind": "generate", "seed": 1, "model": "nope"}')
    found = [str(e) for e in info.value.errors]
    assert "does not serve video jobs" in found[0] and "unknown model" in found[1]


def test_genfarm_kinds_lists_every_field_of_every_variant() -> None:
    from click.testing import CliRunner

    from cli.main import cli
    from jobs.registry import schema_models

    out = CliRunner().invoke(cli, ["kinds"]).output
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("    ")}
    for fam in registry().families.values():
        for schema in fam.kinds.values():
            for model in schema_models(schema):
                for name in set(model.model_fields) - {"model", "op"}:  # op: each variant's head
                    assert name in listed, (fam.name, model.__name__, name)
    assert {"ops[].color_transfer", "ops[].resize", "mix_seed", "strength"} <= listed


def test_a_plugin_that_fails_to_import_is_named(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    dist = tmp_path / "studio_broken-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: studio-broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[genfarm.models]\nbroken = studio_broken_models:SPEC\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    for args in (["models"], ["worker", "--models", "aether"]):
        out = subprocess.run([sys.executable, "-c", "from cli.main import main; main()", *args],
                             env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
        assert "entry point 'broken' (studio_broken_models:SPEC) failed to import" in out.stderr
