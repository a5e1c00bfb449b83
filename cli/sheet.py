"""`genfarm sheet`: a batch's contact sheet, a grid of its outputs labelled by what varies."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cli.io import Refused, printable
from cli.options import friendly_errors, settings_options
from jobs.settings import Settings


@click.command("sheet")
@click.argument("batch")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, allow_dash=True),
              default=None, help="PNG to write ('-' for stdout) [default: sheet-<batch>.png, "
              "sheet-<batch>-p<N>.png from page 2].")
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True,
              help="Which page, for batches of more than --per-page jobs.")
@click.option("--per-page", type=click.IntRange(1, 1024), default=64, show_default=True,
              help="Tiles on a page.")
@click.option("--tile", type=click.IntRange(48, 1024), default=160, show_default=True,
              help="Tile size in pixels (each output is scaled to fit the square).")
@click.option("--columns", type=click.IntRange(1, 256), default=None,
              help="Tiles per row [default: about square, a multiple of the innermost sweep].")
@settings_options
@friendly_errors
def sheet(settings: Settings, batch: str, output: str | None, page: int, per_page: int,
          tile: int, columns: int | None) -> None:
    """Write a contact sheet of BATCH (an id or a prefix of 6+ characters) as a PNG.

    \b
    One tile per job in index order: its first image (a video's first frame), or a grey
    tile with its state (failed, cancelled, queued ...). Each tile is labelled with the
    job's index and the params that vary across the batch (seed=3 yaw=30); the header
    gives the batch, its project, source and counts, and what is the same for all.
    """
    from jobs.batches import resolve_batch
    from jobs.db import make_engine, session_factory
    from jobs.sheets import NoSuchPage, layout_for, plan_sheet, render
    from storage import open_storage

    sessions = session_factory(make_engine(settings.resolved_database_url()))
    with sessions() as session:
        b = resolve_batch(session, batch)
        try:
            plan = plan_sheet(session, b, page, per_page, columns)
        except NoSuchPage as exc:
            raise Refused(str(exc)) from None
    storage = open_storage(settings.resolved_storage_url(), endpoint_url=settings.s3_endpoint_url)
    png = render(plan, storage, tile)
    layout = layout_for(plan, tile)
    size = f"{layout.width}x{layout.height(len(plan.tiles))}"
    span = f"jobs #{plan.first}-#{plan.last} of {plan.jobs}" if plan.tiles else "no jobs"
    said = f"page {plan.page} of {plan.pages}: {span}, {size} px"
    if output == "-":
        sys.stdout.buffer.write(png)
        sys.stdout.buffer.flush()
        click.echo(said, err=True)
        return
    path = Path(output or (f"sheet-{plan.batch_id[:8]}.png" if page == 1
                           else f"sheet-{plan.batch_id[:8]}-p{page}.png"))
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(png)
    tmp.replace(path)
    click.echo(printable(f"{path}: {said}"))
    if plan.page < plan.pages:
        click.echo(printable(f"next: genfarm sheet {plan.batch_id[:12]} --page {plan.page + 1}"),
                   err=True)


def register(group: click.Group) -> None:
    group.add_command(sheet)
