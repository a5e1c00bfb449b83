"""Contact sheets: a batch's outputs as a paged grid of labelled tiles (PNG), for review at a glance.

One tile per job in index order: its first image output, a video's first frame, or a grey tile
naming the job's state. Each tile is labelled with the job's index and only the params that
vary across the batch, so a sweep reads as ``seed=3 yaw=30``. Torch-free: Pillow draws, and
PyAV (the worker extra) decodes a video's first frame where it is installed.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from PIL import Image, ImageDraw, ImageFont
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jobs.errors import NotFound
from jobs.lifecycle import count_by_status
from jobs.models import Batch, Job, Output
from jobs.states import JobStatus
from storage.base import Storage
from storage.errors import BadKey, ChecksumMismatch, ObjectNotFound
from storage.keys import join

MAX_PREVIEW_BYTES = 64 << 20  # a larger output is not read for its tile: a placeholder says so
FETCHES = 8  # outputs read (and thumbnailed) at once: storage round trips overlap
FIRST = ("kind", "model")  # label order: these first, then the most varied keys ...
LAST = ("prompt", "negative_prompt")  # ... and long text last, where it can be cut short

BACKGROUND = (22, 22, 25)
FRAME = (38, 38, 43)  # behind an image that does not fill its square
GREY = (72, 72, 78)  # a tile without an image
TEXT = (235, 235, 238)
DIM = (160, 160, 168)
STATE_COLOURS = {JobStatus.FAILED: (235, 95, 80), JobStatus.CANCELLED: (225, 170, 70),
                 JobStatus.SUCCEEDED: (120, 200, 130)}
PENDING = (130, 165, 220)  # queued, running, paused


class NoSuchPage(NotFound):
    """A contact-sheet page past the batch's last."""


@dataclass(frozen=True)
class Shown:
    """The output a tile shows, as recorded."""

    name: str
    key: str
    sha256: str
    bytes: int
    content_type: str


@dataclass(frozen=True)
class Tile:
    """One job as the sheet shows it."""

    job_id: str
    index: int
    status: str
    label: str  # the varying params, e.g. "seed=3 yaw=30" (the index is drawn apart)
    error: str | None = None
    progress: float = 0.0
    output: Shown | None = None  # its first image (or video) output


@dataclass(frozen=True)
class SheetPlan:
    """What one page shows, read from the database; ``render`` draws it from storage."""

    batch_id: str
    project: str
    source: str
    status: str
    jobs: int
    counts: dict[str, int]
    page: int
    pages: int
    columns: int
    varying: list[str]
    constant: dict[str, Any]
    tiles: list[Tile] = field(default_factory=list)

    @property
    def first(self) -> int:
        return self.tiles[0].index if self.tiles else 0

    @property
    def last(self) -> int:
        return self.tiles[-1].index if self.tiles else 0


# -- what varies ------------------------------------------------------------------------------
def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def varying_keys(params: Sequence[Mapping[str, Any]]) -> list[str]:
    """The keys that take two or more values among the jobs that have them, in label order:
    kind and model first, then the most varied (a sweep's keys before a key that differs
    between two manifest lines), long text last, where it can be cut short. A key only some
    jobs have and that is the same wherever it appears (a video's fps) does not vary."""
    seen: dict[str, set[str]] = {}
    for p in params:
        for key, value in p.items():
            seen.setdefault(key, set()).add(_canon(value))
    varied = {k: len(values) for k, values in seen.items() if len(values) > 1}
    head = [k for k in FIRST if k in varied]
    tail = [k for k in LAST if k in varied]
    middle = sorted(set(varied) - set(head) - set(tail), key=lambda k: (-varied[k], k))
    return head + middle + tail


def constant_params(params: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The params every job has with one same value: what the header says once for all."""
    if not params:
        return {}
    same = dict(params[0])
    for p in params[1:]:
        same = {k: v for k, v in same.items() if k in p and _canon(p[k]) == _canon(v)}
    head = [k for k in FIRST if k in same]
    return {k: same[k] for k in head + sorted(set(same) - set(head))}


def format_value(value: Any, refs: Mapping[str, int] | None = None, limit: int = 32) -> str:
    """A param value as short as it can be read: 30.0 as 30, a job of this batch as #12, a
    stored key by its file name, long text cut with an ellipsis."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, str):
        text = value
    elif isinstance(value, Mapping):
        text = _reference(value, refs or {})
    else:
        text = json.dumps(value, separators=(",", ":"), default=str)
    text = " ".join(text.split())  # newlines and tabs in a prompt read as spaces
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "\u2026"


def _reference(value: Mapping[str, Any], refs: Mapping[str, int]) -> str:
    """A source reference ({"job": id}, {"line": n}, {"key": path}) in a few characters."""
    job = value.get("job")
    if isinstance(job, str):
        return f"#{refs[job]}" if job in refs else f"job {job[:8]}"
    if isinstance(value.get("key"), str):
        return str(value["key"]).rsplit("/", 1)[-1]
    if isinstance(value.get("line"), int):
        return f"line {value['line']}"
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def tile_label(params: Mapping[str, Any], varying: Sequence[str],
               refs: Mapping[str, int] | None = None) -> str:
    """The varying params of one job, e.g. ``seed=3 yaw=30``; ``kind`` is shown bare
    (``edit source=#12 yaw=60``)."""
    parts = []
    for key in varying:
        if key not in params:
            continue
        value = format_value(params[key], refs)
        parts.append(value if key == "kind" else f"{key}={value}")
    return " ".join(parts)


def sweep_columns(params: Sequence[Mapping[str, Any]], tiles: int) -> int:
    """Columns for ``tiles`` tiles a page: about square, but a multiple of the innermost sweep's
    length where there is one (a seed x yaw sweep then reads as a row per seed)."""
    square = max(1, math.ceil(math.sqrt(tiles)))
    period = _period(params)
    if period is None or period > tiles:
        return min(square, tiles) or 1
    return max(1, min(tiles, period * max(1, round(square / period))))


def _period(params: Sequence[Mapping[str, Any]]) -> int | None:
    """How many jobs the fastest-changing key takes to come back to its first value."""
    if len(params) < 4:
        return None
    first, second = params[0], params[1]
    changed = [k for k in first if k in second and _canon(first[k]) != _canon(second[k])]
    if len(changed) != 1:
        return None
    key = changed[0]
    for i in range(2, min(len(params), 33)):
        if key in params[i] and _canon(params[i][key]) == _canon(first[key]):
            return i
    return None


# -- what a page shows --------------------------------------------------------------------------
def page_count(jobs: int, per_page: int) -> int:
    return max(1, math.ceil(jobs / per_page))


def plan_sheet(session: Session, batch: Batch, page: int = 1, per_page: int = 64,
               columns: int | None = None) -> SheetPlan:
    """The tiles of one page of ``batch``'s sheet, labelled with what varies across the whole
    batch (the same on every page). Raises NoSuchPage past the last page."""
    if per_page < 1 or page < 1:
        raise ValueError("page and per_page start at 1")
    rows = session.execute(select(Job.id, Job.index, Job.kind, Job.params)
                           .where(Job.batch_id == batch.id).order_by(Job.index)).all()
    total = len(rows)
    pages = page_count(total, per_page)
    if page > pages:
        raise NoSuchPage(f"page {page}: batch {batch.id} has {pages} page(s) of {per_page} jobs")
    described = [{"kind": kind, **(params or {})} for _, _, kind, params in rows]
    varying = varying_keys(described)
    refs = {job_id: index for job_id, index, _, _ in rows}
    start = (page - 1) * per_page
    on_page = rows[start:start + per_page]
    ids = [r[0] for r in on_page]
    jobs = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(ids)))} if ids else {}
    shown = _first_outputs(session, ids)
    tiles = []
    for (job_id, index, _, _), desc in zip(on_page, described[start:start + per_page],
                                           strict=True):
        job = jobs[job_id]
        tiles.append(Tile(job_id, index, job.status, tile_label(desc, varying, refs),
                          job.error, job.progress, shown.get(job_id)))
    return SheetPlan(batch.id, batch.project, batch.source, batch.status, total,
                     dict(count_by_status(session, batch.id)), page, pages,
                     columns or sweep_columns(described, min(per_page, total)),
                     varying, constant_params(described), tiles)


def _first_outputs(session: Session, job_ids: list[str]) -> dict[str, Shown]:
    """Each job's first image output by name, else its first video."""
    if not job_ids:
        return {}
    found: dict[str, Shown] = {}
    outputs = session.scalars(select(Output).where(
        Output.job_id.in_(job_ids),
        func.lower(Output.content_type).like("image/%") | func.lower(Output.content_type)
        .like("video/%")).order_by(Output.job_id, Output.name)).all()
    for out in sorted(outputs, key=lambda o: (not o.content_type.lower().startswith("image/"),
                                              o.name)):
        if out.job_id not in found:
            found[out.job_id] = Shown(out.name, out.key, out.sha256, out.bytes, out.content_type)
    return found


# -- geometry -------------------------------------------------------------------------------------
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
MAX_LABEL_LINES = 3


@cache
def _font(size: int) -> Font:
    try:
        return ImageFont.load_default(size=size)  # Pillow's own scalable font (FreeType)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1, or built without FreeType
        return ImageFont.load_default()


@dataclass(frozen=True)
class Layout:
    """Where everything goes on a sheet of ``columns`` columns of ``tile``-pixel squares, each
    with ``label_lines`` lines of label below it."""

    columns: int
    tile: int = 160
    label_lines: int = 2

    @property
    def font_size(self) -> int:
        return max(10, min(18, self.tile // 12))

    @property
    def line_h(self) -> int:
        return self.font_size + 4

    @property
    def gap(self) -> int:
        return max(6, self.tile // 16)

    @property
    def margin(self) -> int:
        return max(12, self.tile // 8)

    @property
    def cell_w(self) -> int:
        return self.tile + self.gap

    @property
    def cell_h(self) -> int:
        return self.tile + 4 + self.label_lines * self.line_h + self.gap

    @property
    def header_h(self) -> int:
        return (self.font_size + 8) + 3 * self.line_h + self.gap + 8

    @property
    def width(self) -> int:
        grid = 2 * self.margin + self.columns * self.cell_w - self.gap
        return max(grid, 480)  # room for the header, however few the columns

    def height(self, tiles: int) -> int:
        rows = max(1, math.ceil(tiles / self.columns))
        return self.margin + self.header_h + rows * self.cell_h - self.gap + self.margin

    def tile_box(self, position: int) -> tuple[int, int, int, int]:
        """The image square of the ``position``-th tile on the page: (left, top, right, bottom)."""
        row, col = divmod(position, self.columns)
        x = self.margin + col * self.cell_w
        y = self.margin + self.header_h + row * self.cell_h
        return x, y, x + self.tile, y + self.tile


def layout_for(plan: SheetPlan, tile: int = 160) -> Layout:
    """The page's layout: as many label lines (one to three) as its longest label needs."""
    base = Layout(plan.columns, tile)
    font = _font(base.font_size)
    need = max((len(_flow(_label_words(t), font, tile, MAX_LABEL_LINES)) for t in plan.tiles),
               default=1)
    return Layout(plan.columns, tile, max(1, need))


# -- drawing -------------------------------------------------------------------------------------
def render(plan: SheetPlan, storage: Storage, tile: int = 160) -> bytes:
    """The page as PNG bytes: previews read through ``storage`` (sha256 checked), several at
    once. An output that is missing, damaged or unreadable gets a placeholder, not an error;
    storage that cannot be reached raises (StorageUnavailable)."""
    layout = layout_for(plan, tile)
    sheet = Image.new("RGB", (layout.width, layout.height(len(plan.tiles))), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    _draw_header(draw, plan, layout)
    with ThreadPoolExecutor(FETCHES) as pool:
        previews = list(pool.map(lambda t: _preview(storage, plan.project, t, tile), plan.tiles))
    for position, (t, preview) in enumerate(zip(plan.tiles, previews, strict=True)):
        _draw_tile(sheet, draw, layout, layout.tile_box(position), t, preview)
    buf = io.BytesIO()
    sheet.save(buf, "PNG")
    return buf.getvalue()


@dataclass(frozen=True)
class Preview:
    image: Image.Image | None = None
    video: bool = False
    note: str = ""  # why there is no image: "no image", "missing from storage" ...


def _preview(storage: Storage, project: str, t: Tile, size: int) -> Preview:
    out = t.output
    if t.status != JobStatus.SUCCEEDED:
        return Preview()
    if out is None:
        return Preview(note="no image")
    video = out.content_type.lower().startswith("video/")
    if out.bytes > MAX_PREVIEW_BYTES:
        return Preview(video=video, note=f"{'moving' if video else 'still'} image too large "
                                        "to preview")
    if not out.key.startswith(join(storage.prefix, project) + "/"):
        return Preview(video=video, note="outside the project")  # a bad row: never read
    try:
        data = storage.get(out.key, sha256=out.sha256)
    except ObjectNotFound:
        return Preview(video=video, note="missing from storage")
    except ChecksumMismatch:
        return Preview(video=video, note="damaged (sha256)")
    except BadKey:
        return Preview(video=video, note="bad key")
    try:
        image = _first_frame(data) if video else _open_image(data, size)
    except Exception:  # noqa: BLE001 - any undecodable output gets its placeholder
        image = None
    if image is None:
        return Preview(video=video, note="moving image (no preview)" if video
                       else "unreadable image")
    return Preview(_fit(image, size), video)


def _open_image(data: bytes, size: int) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale
    return _rgb(image)


def _first_frame(data: bytes) -> Image.Image | None:
    """A video's first frame, where PyAV is installed; None if it is not."""
    try:
        import av
    except ImportError:
        return None
    with av.open(io.BytesIO(data), mode="r") as container:
        for frame in container.decode(video=0):
            return _rgb(frame.to_image())
    return None


def _rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, FRAME)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def _fit(image: Image.Image, size: int) -> Image.Image:
    """Scaled to fit a ``size`` square, keeping its aspect (small renders scale up)."""
    w, h = image.size
    scale = min(size / w, size / h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    if new == image.size:
        return image
    return image.resize(new, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC)


def _state_colour(status: str) -> tuple[int, int, int]:
    try:
        return STATE_COLOURS.get(JobStatus(status), PENDING)
    except ValueError:
        return PENDING


def _label_words(t: Tile) -> list[str]:
    return [f"#{t.index}", *(t.label.split(" ") if t.label else [])]


def _draw_tile(sheet: Image.Image, draw: ImageDraw.ImageDraw, layout: Layout,
               box: tuple[int, int, int, int], t: Tile, preview: Preview) -> None:
    x0, y0, x1, y1 = box
    size = layout.tile
    small = _font(layout.font_size)
    if preview.image is not None:
        draw.rectangle(box, fill=FRAME)
        w, h = preview.image.size
        sheet.paste(preview.image, (x0 + (size - w) // 2, y0 + (size - h) // 2))
        if preview.video:
            _play_badge(draw, x0, y1, size)
    elif t.status == JobStatus.SUCCEEDED:  # nothing to show: say why
        draw.rectangle(box, fill=GREY)
        if preview.video:
            _play_badge(draw, x0 + size // 2 - max(6, size // 14) - 4, y0 + size // 2 - 4, size)
        _centred(draw, (x0, y0 + size // 2 + 4, x1), preview.note or "no image", small, TEXT)
    else:  # a grey tile naming the state, and a failure's error
        draw.rectangle(box, fill=GREY)
        colour = _state_colour(t.status)
        word = f"running {t.progress:.0%}" if t.status == JobStatus.RUNNING and t.progress \
            else t.status
        big_size = max(layout.font_size + 2, size // 7)
        errors = _flow(" ".join(t.error.split()).split(" "), small, size - 12, 3) if t.error else []
        top = y0 + (size - big_size - 6 - len(errors) * layout.line_h) // 2
        _centred(draw, (x0, top, x1), word, _font(big_size), colour)
        for i, line in enumerate(errors):
            _centred(draw, (x0, top + big_size + 6 + i * layout.line_h, x1), line, small, TEXT)
        if t.status in (JobStatus.FAILED, JobStatus.CANCELLED):
            draw.rectangle(box, outline=colour, width=max(2, size // 60))
    # the label: "#index" bright, then the varying params
    lines = _flow(_label_words(t), small, size, layout.label_lines)
    index = f"#{t.index}"
    for i, line in enumerate(lines):
        y = y1 + 4 + i * layout.line_h
        if i == 0:
            draw.text((x0, y), index, font=small, fill=TEXT)
            rest = line[len(index):]
            draw.text((x0 + small.getlength(index), y), rest, font=small, fill=DIM)
        else:
            draw.text((x0, y), line, font=small, fill=DIM)


def _play_badge(draw: ImageDraw.ImageDraw, x: int, bottom: int, size: int) -> None:
    """A small play button in the lower left corner: this tile is a video."""
    r = max(6, size // 14)
    cx, cy = x + r + 4, bottom - r - 4
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(0, 0, 0))
    s = r * 0.55
    draw.polygon([(cx - s * 0.7, cy - s), (cx - s * 0.7, cy + s), (cx + s, cy)], fill=TEXT)


def _centred(draw: ImageDraw.ImageDraw, at: tuple[int, int, int], text: str, font: Font,
             fill: tuple[int, int, int]) -> None:
    x0, y, x1 = at
    text = _ellipsize(text, font, x1 - x0 - 8)
    draw.text((x0 + (x1 - x0 - font.getlength(text)) / 2, y), text, font=font, fill=fill)


def _flow(words: list[str], font: Font, width: int, lines: int) -> list[str]:
    """``words`` wrapped to ``width`` over at most ``lines`` lines; what does not fit is cut
    with an ellipsis (a word wider than a line too)."""
    out: list[str] = []
    line = ""
    for i, word in enumerate(words):
        joined = f"{line} {word}" if line else word
        if font.getlength(joined) <= width:
            line = joined
            continue
        if line:
            out.append(line)
        if len(out) == lines:
            out[-1] = _ellipsize(out[-1] + " \u2026", font, width)
            return out
        if len(out) == lines - 1:  # the last line: the rest, cut where it must be
            out.append(_ellipsize(" ".join(words[i:]), font, width))
            return out
        line = word if font.getlength(word) <= width else _ellipsize(word, font, width)
    if line:
        out.append(line)
    return out


def _ellipsize(text: str, font: Font, width: int) -> str:
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "\u2026") > width:
        text = text[:-1]
    return text.rstrip() + "\u2026"


def _draw_header(draw: ImageDraw.ImageDraw, plan: SheetPlan, layout: Layout) -> None:
    width = layout.width - 2 * layout.margin
    x, y = layout.margin, layout.margin
    title = _font(layout.font_size + 4)
    small = _font(layout.font_size)
    head = f"batch {plan.batch_id}"
    draw.text((x, y), head, font=title, fill=TEXT)
    hx = x + int(title.getlength(head))
    where = f"   {plan.project} \u00b7 {plan.source or 'no source'} \u00b7 {plan.status}"
    draw.text((hx, y + 4), _ellipsize(where, small, width - (hx - x)), font=small, fill=DIM)
    y += layout.font_size + 8
    counts = ", ".join(f"{plan.counts[s]} {s}" for s in JobStatus if plan.counts.get(s))
    span = f": #{plan.first}-#{plan.last}" if plan.tiles else ""
    line = f"{plan.jobs} jobs ({counts or 'none'})  \u00b7  page {plan.page} of {plan.pages}{span}"
    draw.text((x, y), _ellipsize(line, small, width), font=small, fill=TEXT)
    y += layout.line_h
    varies = ", ".join(plan.varying) or "nothing (one job, or all alike)"
    draw.text((x, y), _ellipsize(f"varies: {varies}", small, width), font=small, fill=DIM)
    y += layout.line_h
    same = " ".join(f"{k}={format_value(v, limit=24)}" for k, v in plan.constant.items())
    if same:
        draw.text((x, y), _ellipsize(f"same for all: {same}", small, width), font=small,
                  fill=DIM)
