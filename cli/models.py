"""`genfarm kinds` and `genfarm models`: what a manifest line may ask for, and which models this
farm (and this machine) can run. Torch-free: families are described by their specs."""

from __future__ import annotations

import json
import typing
from typing import Any

import click

from cli.options import friendly_errors, settings_options
from jobs.settings import Settings


def _fields(model: Any, prefix: str = "") -> list[tuple[str, str, str]]:
    """(name, description, default) of every field, with the fields of nested parameter
    models (an edit's list of image ops) listed under their parent as ``parent[].field``."""
    from jobs.registry import Params, SourceRef

    rows = []
    for name, f in model.model_fields.items():
        if name == "model" and not prefix:
            continue
        default = "required" if f.is_required() else f"default {f.default!r}"
        if isinstance(f.default, list | dict) or f.default is None:
            default = "required" if f.is_required() else "optional"
        rows.append((prefix + name, f.description or "", default))
        nested = [a for a in typing.get_args(f.annotation) if isinstance(a, type)
                  and issubclass(a, Params) and not issubclass(a, SourceRef)]
        for sub in nested:
            rows.extend(_fields(sub, f"{prefix}{name}[]."))
    return rows


@click.command()
@click.option("--json", "as_json", is_flag=True, help="The JSON schema of every kind and variant.")
@settings_options
@friendly_errors
def kinds(settings: Settings, as_json: bool) -> None:
    """List the job kinds, the models that serve each, and every field of every variant.

    \b
    A line's fields come from its model's family: e.g. generate on aether takes a seed
    and a camera; generate on a diffusers model takes a prompt. Set "model" on a line
    to choose (default: the first model listed for the kind).
    """
    from jobs.catalog import load_catalog
    from jobs.kinds import COMMON_FIELDS
    from jobs.registry import Variants, schema_models

    catalog = load_catalog(settings)
    families: dict[str, list[str]] = {name: [] for name in catalog.registry.families}
    for name, entry in catalog.models.items():
        families[entry.family].append(name)
    if as_json:
        out: dict[str, Any] = {}
        for kind in catalog.registry.kinds:
            for fam_name, models in families.items():
                schema = catalog.registry.families[fam_name].kinds.get(kind)
                if schema is None:
                    continue
                doc = (schema.adapter().json_schema() if isinstance(schema, Variants)
                       else schema.model_json_schema())
                out.setdefault(kind, {})[fam_name] = {"models": models, "schema": doc}
        click.echo(json.dumps(out, indent=2))
        return
    for spec in catalog.registry.kinds.values():
        click.secho(f"{spec.name}: {spec.summary}", bold=True)
        for fam_name, models in families.items():
            schema = catalog.registry.families[fam_name].kinds.get(spec.name)
            if schema is None:
                continue
            on = (f"on {', '.join(models)} ({fam_name})" if models
                  else f"on {fam_name} models (none declared in the models file yet)")
            click.echo(f"  {on}:")
            for model in schema_models(schema):
                indent = "    "
                if isinstance(schema, Variants):
                    value = model.model_fields[schema.discriminator].annotation
                    tag = getattr(value, "__args__", ("?",))[0]
                    click.echo(f"    {schema.discriminator} = {tag!r}: {model.__doc__ or ''}".rstrip())
                    indent = "      "
                for name, desc, default in _fields(model):
                    if isinstance(schema, Variants) and name == schema.discriminator:
                        continue
                    click.echo(f"{indent}{name:<22} {desc} ({default})")
    click.echo(f"\nEvery line may also set: model, {', '.join(sorted(COMMON_FIELDS - {'kind'}))} "
               "(priority -1000..1000, max_attempts 1..20, count: N jobs from consecutive "
               'seeds).\nA list sweeps a field; {"range": [start, stop, step]} sweeps a range.')


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--no-digest", is_flag=True, help="Do not hash the weights (fast on huge folders).")
@settings_options
@friendly_errors
def models(settings: Settings, as_json: bool, no_digest: bool) -> None:
    """List the models of the models file (GENFARM_MODELS_FILE) and the built-in ones: family,
    kinds, weights and their sha256, and whether this machine can load them.

    \b
    A models file declares each model once, e.g.
      [models.sd-tiny]
      family = "diffusers"
      weights = "/models/sd-tiny"          # folder, file, file:// or s3:// URL
      sha256 = "..."                       # optional pin, checked at load
      options = { dtype = "float16" }
    Exit status 1 when a model cannot be loaded here.
    """
    from jobs.catalog import iter_checks, load_catalog

    catalog = load_catalog(settings)
    checks = list(iter_checks(catalog, digest=not no_digest))
    if as_json:
        click.echo(json.dumps([{
            "name": c.entry.name, "family": c.entry.family, "kinds": c.kinds,
            "queues": sorted({catalog.queue(k, c.entry.name) for k in c.kinds}),
            "weights": c.entry.weights, "sha256": c.digest, "pinned": c.entry.sha256,
            "options": dict(c.entry.options), "declared_in": c.entry.declared_in,
            "loadable": c.loadable, "problems": c.problems} for c in checks], indent=2))
    else:
        for c in checks:
            mark = click.style("ok", fg="green") if c.loadable else click.style("cannot load",
                                                                                fg="red")
            click.echo(f"{c.entry.name:<16} {c.entry.family:<10} {','.join(c.kinds):<22} {mark}")
            weights = c.entry.weights or "(family default)"
            click.echo(f"  weights  {weights}" + (f"\n  sha256   {c.digest}" if c.digest else ""))
            for problem in c.problems:
                click.echo(f"  problem  {problem}")
        click.echo(f"models file: {settings.models_file or '(none: built-in models only)'}")
    if not all(c.loadable for c in checks):
        raise SystemExit(1)


def register(cli: click.Group) -> None:
    cli.add_command(kinds)
    cli.add_command(models)
