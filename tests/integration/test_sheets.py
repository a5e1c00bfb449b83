"""Contact sheets of a batch made by the real runner (tiny aether images and a video, noop jobs
that fail or are cancelled, one left queued): through the CLI (its own process) and the API, on
SQLite with a local folder and on PostgreSQL with the S3 endpoint."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageStat
from sqlalchemy import select

from jobs.batches import resolve_batch
from jobs.db import make_engine, session_factory, upgrade
from jobs.models import Job, Output
from jobs.settings import Settings
from jobs.sheets import (
    GREY,
    STATE_COLOURS,
    SheetPlan,
    Shown,
    Tile,
    format_value,
    layout_for,
    plan_sheet,
    render,
    sweep_columns,
    tile_label,
    varying_keys,
)
from jobs.states import JobStatus
from jobs.tokens import create_token
from storage import open_storage
from storage.keys import join
from tests.conftest import S3_ENV, create_pg_database, drop_pg_database, run_cli
from workers.runner import Runtime

MANIFEST = [
    {"kind": "generate", "seed": {"range": [0, 3]}, "yaw": [0, 30], "width": 32, "height": 32},
    {"kind": "noop", "fail": "always", "max_attempts": 1},  # 6: fails
    {"kind": "video", "mode": "orbit", "seed": 1, "frames": 2, "fps": 2, "width": 32,
     "height": 32},  # 7: a video
    {"kind": "generate", "seed": 9, "width": 48, "height": 48},  # 8: never run, stays queued
    {"kind": "noop", "tag": 5},  # 9: cancelled
]
TILE = 64


@pytest.fixture(scope="module", params=["sqlite+local", "postgresql+s3"])
def farm(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("sheets")
    env = {"GENFARM_DATA_DIR": str(tmp / "data"), "GENFARM_MODEL_PROFILE": "tiny"}
    with pytest.MonkeyPatch.context() as mp:
        if request.param.startswith("sqlite"):
            url, server = f"sqlite:///{tmp / 'genfarm.db'}", None
            env["GENFARM_STORAGE_URL"] = (tmp / "out").as_uri()
        else:
            import boto3

            server = request.getfixturevalue("pg_server")
            url = create_pg_database(server)
            endpoint = request.getfixturevalue("s3_endpoint")
            for k, v in S3_ENV.items():
                mp.setenv(k, v)
            bucket = f"genfarm-sheets-{uuid.uuid4().hex[:12]}"
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
            env.update(S3_ENV, GENFARM_STORAGE_URL=f"s3://{bucket}/outputs",
                       GENFARM_S3_ENDPOINT_URL=endpoint)
        env["GENFARM_DATABASE_URL"] = url
        upgrade(url)
        settings = Settings(database_url=url, data_dir=tmp / "data", model_profile="tiny",
                            storage_url=env["GENFARM_STORAGE_URL"],
                            s3_endpoint_url=env.get("GENFARM_S3_ENDPOINT_URL"))
        manifest = tmp / "sweep.jsonl"
        manifest.write_text("\n".join(json.dumps(line) for line in MANIFEST) + "\n")
        sub = run_cli("submit", str(manifest), "--project", "review", "--json", env=env)
        assert sub.returncode == 0, sub.stderr
        batch = json.loads(sub.stdout)["batch_id"]
        runtime = Runtime(settings)
        with runtime.sessions() as s:
            ids = {j.index: j.id for j in s.scalars(select(Job).where(Job.batch_id == batch))}
        cancel = run_cli("cancel", ids[9], env=env)  # before the noop pass could take it in
        assert cancel.returncode == 0, cancel.stderr
        assert runtime.run_unit([ids[i] for i in range(6)]).succeeded == 6
        assert runtime.run_unit([ids[7]]).succeeded == 1
        assert runtime.run_unit([ids[6]]).failed == 1
        with runtime.sessions() as s:
            states = {j.index: j.status for j in s.scalars(select(Job).where(Job.batch_id == batch))}
        runtime.close()
        assert states == {**dict.fromkeys(range(6), "succeeded"), 6: "failed", 7: "succeeded",
                          8: "queued", 9: "cancelled"}
        store = open_storage(settings.resolved_storage_url(),
                             endpoint_url=settings.s3_endpoint_url)
        yield {"env": env, "settings": settings, "batch": batch, "ids": ids, "tmp": tmp,
               "store": store, "url": url}
        if server is not None:
            drop_pg_database(server, url)


def plan_of(farm: dict[str, Any], page: int = 1, per_page: int = 64) -> SheetPlan:
    engine = make_engine(farm["url"])
    try:
        with session_factory(engine)() as s:
            return plan_sheet(s, resolve_batch(s, farm["batch"]), page, per_page)
    finally:
        engine.dispose()


def mean(image: Image.Image) -> list[float]:
    return ImageStat.Stat(image.convert("RGB")).mean


def source_image(farm: dict[str, Any], index: int) -> Image.Image:
    engine = make_engine(farm["url"])
    with session_factory(engine)() as s:
        out = s.scalar(select(Output).where(Output.job_id == farm["ids"][index]))
    engine.dispose()
    assert out is not None
    data = farm["store"].get(out.key, sha256=out.sha256)
    if out.content_type == "video/mp4":
        import av

        with av.open(io.BytesIO(data)) as container:
            return next(iter(container.decode(video=0))).to_image()
    return Image.open(io.BytesIO(data))


def test_cli_sheet_has_one_tile_per_job_showing_each_state(farm: dict[str, Any]) -> None:
    out = farm["tmp"] / "sheet.png"
    done = run_cli("sheet", farm["batch"][:8], "-o", str(out), "--tile", str(TILE),
                   env=farm["env"])
    assert done.returncode == 0, done.stderr
    assert "page 1 of 1" in done.stdout and "#0-#9 of 10" in done.stdout
    plan = plan_of(farm)
    assert [t.index for t in plan.tiles] == list(range(10))
    layout = layout_for(plan, TILE)
    image = Image.open(out)
    image.load()
    assert image.format == "PNG"
    assert image.size == (layout.width, layout.height(10))
    assert layout.height(10) == layout.height(1) + (-(-10 // plan.columns) - 1) * layout.cell_h
    for index in [*range(6), 7]:  # each image, and the video's first frame, in its own square
        box = layout.tile_box(index)
        shown = mean(image.crop(box))
        expected = mean(source_image(farm, index).resize((TILE, TILE)))
        assert all(abs(a - b) < 12 for a, b in zip(shown, expected, strict=True)), (index, shown)
        assert image.getpixel((box[0] + 2, box[1] + 2)) != GREY
    for index, status in ((6, JobStatus.FAILED), (9, JobStatus.CANCELLED), (8, None)):
        x0, y0, _, _ = layout.tile_box(index)
        assert image.getpixel((x0 + 5, y0 + 5)) == GREY, index  # a grey tile ...
        edge = STATE_COLOURS[status] if status else GREY  # ... outlined when failed, cancelled
        assert image.getpixel((x0, y0)) == edge, index


def test_labels_name_what_varies_across_the_batch(farm: dict[str, Any]) -> None:
    plan = plan_of(farm)
    assert plan.varying[:2] == ["kind", "model"]
    assert {"seed", "yaw", "width", "fail", "tag"} <= set(plan.varying)
    # the same for every job that has it: not on the labels
    assert not {"frames", "fps", "radius", "mode", "payload_bytes"} & set(plan.varying)
    assert plan.constant == {}  # kinds share no param with one value
    labels = {t.index: t.label for t in plan.tiles}
    assert labels[0].startswith("generate model=aether ")
    assert "seed=0" in labels[0].split() and "yaw=0" in labels[0].split()
    assert {"seed=0", "yaw=30"} <= set(labels[1].split())
    assert {"noop", "model=noop", "fail=always"} <= set(labels[6].split())
    assert {"video", "seed=1"} <= set(labels[7].split())
    assert {"seed=9", "width=48"} <= set(labels[8].split())
    tiles = {t.index: t for t in plan.tiles}
    assert tiles[6].error and "always fails" in tiles[6].error
    assert tiles[7].output is not None and tiles[7].output.content_type == "video/mp4"
    assert tiles[8].output is None and tiles[9].output is None


def test_pages(farm: dict[str, Any]) -> None:
    sizes = []
    for page in (1, 2, 3):
        out = farm["tmp"] / f"p{page}.png"
        done = run_cli("sheet", farm["batch"], "-o", str(out), "--page", str(page),
                       "--per-page", "4", "--tile", str(TILE), env=farm["env"])
        assert done.returncode == 0, done.stderr
        assert f"page {page} of 3" in done.stdout
        plan = plan_of(farm, page, per_page=4)
        assert [t.index for t in plan.tiles] == list(range(4 * (page - 1), min(10, 4 * page)))
        layout = layout_for(plan, TILE)
        with Image.open(out) as image:
            assert image.size == (layout.width, layout.height(len(plan.tiles)))
            sizes.append(image.size)
    assert sizes[0][0] == sizes[2][0] and sizes[2][1] < sizes[0][1]  # 2 tiles: fewer rows
    past = run_cli("sheet", farm["batch"], "-o", str(farm["tmp"] / "p4.png"), "--page", "4",
                   "--per-page", "4", env=farm["env"])
    assert past.returncode == 2 and "page 4" in past.stderr and "3 page" in past.stderr
    assert "Traceback" not in past.stderr and not (farm["tmp"] / "p4.png").exists()


def test_unreadable_outputs_get_placeholders(farm: dict[str, Any]) -> None:
    store = farm["store"]
    junk = store.put(join(store.prefix, "review", "in", "broken.mp4"), b"not a video", "video/mp4")
    plan = plan_of(farm)
    tiles = [
        Tile("a", 0, "succeeded", "broken video",
             output=Shown("video.mp4", junk.key, junk.sha256, junk.bytes, "video/mp4")),
        Tile("b", 1, "succeeded", "missing",
             output=Shown("image.png", junk.key + ".gone", junk.sha256, 10, "image/png")),
        Tile("c", 2, "succeeded", "damaged",
             output=Shown("image.png", junk.key, "0" * 64, junk.bytes, "image/png")),
        Tile("d", 3, "succeeded", "elsewhere",  # a bad row naming another project's object
             output=Shown("image.png", join(store.prefix, "other", "x.png"), "0" * 64, 1,
                          "image/png")),
    ]
    odd = SheetPlan(**{**plan.__dict__, "tiles": tiles, "columns": 2})
    image = Image.open(io.BytesIO(render(odd, store, TILE)))
    layout = layout_for(odd, TILE)
    for position in range(4):
        x0, y0, _, _ = layout.tile_box(position)
        assert image.getpixel((x0 + 3, y0 + 3)) == GREY, position


def test_api_sheet_for_the_owner_only(farm: dict[str, Any]) -> None:
    from api.app import create_app

    app = create_app(farm["settings"])
    with app.state.sessions.begin() as s:
        mine = create_token(s, "review", "tests").token
        theirs = create_token(s, "other", "tests").token
    client = TestClient(app)
    path = f"/v1/batches/{farm['batch']}/sheet.png"
    answer = client.get(path, headers={"Authorization": f"Bearer {mine}"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/png"
    assert answer.headers["x-genfarm-pages"] == "1"
    plan = plan_of(farm)
    with Image.open(io.BytesIO(answer.content)) as image:
        assert image.size == (layout_for(plan).width, layout_for(plan).height(10))
    page = client.get(f"{path}?page=3&per_page=4&tile={TILE}",
                      headers={"Authorization": f"Bearer {mine}"})
    assert page.status_code == 200 and page.headers["x-genfarm-page"] == "3"
    layout = layout_for(plan_of(farm, 3, 4), TILE)
    with Image.open(io.BytesIO(page.content)) as image:
        assert image.size == (layout.width, layout.height(2))
    past = client.get(f"{path}?page=4&per_page=4", headers={"Authorization": f"Bearer {mine}"})
    assert past.status_code == 404 and "page 4" in past.json()["detail"]
    for headers in ({"Authorization": f"Bearer {theirs}"}, {}):
        refused = client.get(path, headers=headers)
        assert refused.status_code == (404 if headers else 401), refused.text
        assert refused.headers["content-type"] == "application/json"
    prefix = client.get(f"/v1/batches/{farm['batch'][:8]}/sheet.png",
                        headers={"Authorization": f"Bearer {theirs}"})
    assert prefix.status_code == 404


def test_label_values() -> None:
    jobs = [{"kind": "generate", "seed": s, "yaw": y, "fov": 30.0, "prompt": "a barn " * 20}
            for s in range(3) for y in (-30.0, 0.0, 30.0)]
    jobs += [{"kind": "edit", "source": {"job": j}, "yaw": 60.0, "fov": 30.0} for j in ("j2", "j1")]
    keys = varying_keys(jobs)
    assert keys == ["kind", "yaw", "seed", "source"]  # the most varied first; fov never varies
    assert tile_label(jobs[1], keys) == "generate yaw=0 seed=0"
    assert tile_label(jobs[-1], keys, {"j1": 4}) == "edit yaw=60 source=#4"
    assert tile_label(jobs[-1], keys) == "edit yaw=60 source=job j1"
    text = [{"prompt": "a red barn at dusk, volumetric light, 35mm, wide shot"}, {"prompt": "x"}]
    assert varying_keys([{"prompt": "p", "seed": 1, "cfg": 2}, {"prompt": "q", "seed": 2,
                                                                "cfg": 3}]) == ["cfg", "seed",
                                                                                "prompt"]
    label = tile_label(text[0], varying_keys(text))
    assert label.startswith("prompt=a red barn") and label.endswith("\u2026") and len(label) < 45
    assert format_value(0.7) == "0.7" and format_value(30.0) == "30" and format_value(True) == "true"
    assert format_value({"key": "in/plates/sh010.png"}) == "sh010.png"
    assert format_value("two\nlines") == "two lines"
    assert varying_keys([{"seed": 1}]) == [] and varying_keys([]) == []
    # a seed x yaw sweep of three yaws: rows of whole seeds
    assert sweep_columns(jobs[:9], 9) == 3 and sweep_columns(jobs[:9], 64) == 9
    assert sweep_columns([{"seed": s} for s in range(20)], 20) == 5
