"""Two projects on one farm: every reference a job can make (an edit's source, a colour-transfer
reference, a video's audio) resolves inside the caller's project only, and a refusal reads the
same whether or not the other project's object exists. Through the CLI (its own process) and the
API, on a local folder and on the S3 endpoint; project A's outputs are made by the real runner."""

from __future__ import annotations

import json
import re
import struct
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from jobs.db import make_engine, session_factory, upgrade
from jobs.models import Batch, Job, Output
from jobs.settings import Settings
from jobs.tokens import create_token
from storage import open_storage
from storage.keys import join
from tests.conftest import S3_ENV, run_cli
from workers.runner import Runtime


def wav() -> bytes:
    data = b"\0\0" * 800
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, 1, 8000, 16000, 2, 16) + b"data"
            + struct.pack("<I", len(data)) + data)


@pytest.fixture(params=["local", "s3"])
def farm(request: pytest.FixtureRequest, tmp_path: Path, pg_url: str) -> dict[str, Any]:
    # a diffusers model declared by name (never loaded here: submission only validates)
    models = tmp_path / "models.toml"
    models.write_text(f'[models.sd]\nfamily = "diffusers"\nweights = "{tmp_path / "sd"}"\n')
    env = {"GENFARM_DATABASE_URL": pg_url, "GENFARM_DATA_DIR": str(tmp_path / "data"),
           "GENFARM_MODEL_PROFILE": "tiny", "GENFARM_MODELS_FILE": str(models)}
    if request.param == "local":
        env["GENFARM_STORAGE_URL"] = (tmp_path / "out").as_uri()
    else:
        bucket = request.getfixturevalue("s3_bucket")
        endpoint = request.getfixturevalue("s3_endpoint")
        env.update(S3_ENV, GENFARM_STORAGE_URL=f"s3://{bucket}/outputs",
                   GENFARM_S3_ENDPOINT_URL=endpoint)
    upgrade(pg_url)
    settings = Settings(database_url=pg_url, data_dir=tmp_path / "data", model_profile="tiny",
                        models_file=models,
                        storage_url=env["GENFARM_STORAGE_URL"],
                        s3_endpoint_url=env.get("GENFARM_S3_ENDPOINT_URL"))
    # project a: one generated image, made by the real runner, and two uploads
    manifest = tmp_path / "a.jsonl"
    manifest.write_text('{"kind": "generate", "seed": 5, "width": 32, "height": 32}\n')
    sub = run_cli("submit", str(manifest), "--project", "a", "--json", env=env)
    assert sub.returncode == 0, sub.stderr
    batch_a = json.loads(sub.stdout)["batch_id"]
    runtime = Runtime(settings)
    with runtime.sessions() as s:
        job_ids = list(s.scalars(select(Job.id).where(Job.batch_id == batch_a)))
    assert runtime.run_unit(job_ids).succeeded == 1
    with runtime.sessions() as s:
        image = s.scalar(select(Output).where(Output.job_id == job_ids[0]))
    store = open_storage(settings.resolved_storage_url(), endpoint_url=settings.s3_endpoint_url)
    store.put(join(store.prefix, "a", "in", "plate.png"), store.get(image.key), "image/png")
    store.put(join(store.prefix, "a", "in", "track.wav"), wav(), "audio/wav")
    runtime.close()
    return {"env": env, "settings": settings, "store": store, "job": job_ids[0],
            "image_key": image.key, "tmp": tmp_path, "pg_url": pg_url}


SD = {"model": "sd", "prompt": "a barn", "seed": 1, "source": {"key": "in/own.png"}}


def lines_referencing(job: str, key: str, audio: str, plate: str) -> list[dict[str, Any]]:
    """One line per way to reach another project's object, a field that a plugin family adds
    (the diffusers family's inpaint mask) among them."""
    return [
        {"kind": "edit", "op": "inpaint", **SD, "mask": {"key": key}},
        {"kind": "edit", "op": "inpaint", **SD, "mask": {"job": job}},
        {"kind": "edit", "op": "rerender", "source": {"job": job}, "yaw": 10},
        {"kind": "edit", "op": "image", "source": {"job": job}, "ops": [{"blur": 1}]},
        {"kind": "edit", "op": "image", "source": {"key": key}, "ops": [{"blur": 1}]},
        {"kind": "edit", "op": "image", "source": {"key": plate}, "ops": [{"blur": 1}]},
        {"kind": "edit", "op": "image", "source": {"key": f"../{plate}"}, "ops": [{"blur": 1}]},
        {"kind": "edit", "op": "image", "source": {"key": "in/own.png"},
         "ops": [{"color_transfer": {"key": key}}]},
        {"kind": "video", "mode": "beats", "seed": 1, "audio": {"key": audio}},
    ]


def normalized(messages: list[str], *secrets: str) -> list[str]:
    out = []
    for m in messages:
        for s in secrets:
            m = m.replace(s, "<ref>")
        out.append(re.sub(r"[0-9a-f]{32}", "<ref>", m))
    return out


def cli_errors(farm: dict[str, Any], project: str, lines: list[dict[str, Any]]) -> list[str]:
    path = farm["tmp"] / f"{uuid.uuid4().hex}.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    result = run_cli("submit", str(path), "--project", project, env=farm["env"])
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    return [line.split(": ", 1)[1] for line in result.stderr.splitlines()
            if line.startswith(path.name + ":")]


def test_references_stay_inside_the_callers_project(farm: dict[str, Any]) -> None:
    store = farm["store"]
    own = join(store.prefix, "b", "in", "own.png")
    store.put(own, store.get(farm["image_key"]), "image/png")
    a_plate = join(store.prefix, "a", "in", "plate.png")
    a_audio = join(store.prefix, "a", "in", "track.wav")
    real = lines_referencing(farm["job"], farm["image_key"], a_audio, "a/in/plate.png")
    # the same references to objects that exist nowhere
    ghost_key = farm["image_key"].replace(farm["job"], uuid.uuid4().hex)
    ghosts = lines_referencing(uuid.uuid4().hex, ghost_key,
                               a_audio.replace("track", "nothing"), "a/in/nothing.png")
    seen = cli_errors(farm, "b", real)
    assert len(seen) == len(real), seen
    assert all("this project" in m for m in seen), seen
    unseen = cli_errors(farm, "b", ghosts)
    # a refusal says nothing about whether project a has the object
    assert normalized(seen, farm["image_key"], a_plate, a_audio, "a/in/plate.png") == normalized(
        unseen, ghost_key, a_audio.replace("track", "nothing"), "a/in/nothing.png")
    engine = make_engine(farm["pg_url"])
    with session_factory(engine)() as s:  # nothing written for b
        assert s.scalar(select(func.count()).select_from(Batch).where(Batch.project == "b")) == 0
    engine.dispose()
    # project a reaches the very same objects: the refusals above are about the project
    ok = run_cli("submit", "-", "--project", "a", "--json", env=farm["env"], input="\n".join(
        json.dumps(line) for line in lines_referencing(
            farm["job"], farm["image_key"], a_audio, "in/plate.png")[2:6]
        + [{"kind": "edit", "op": "image", "source": {"key": "in/plate.png"},
            "ops": [{"color_transfer": {"key": farm["image_key"]}}]},
           {"kind": "video", "mode": "beats", "seed": 1, "audio": {"key": "in/track.wav"}}]
    ).encode())
    assert ok.returncode == 0, ok.stderr


def test_the_api_resolves_references_inside_the_tokens_project(farm: dict[str, Any]) -> None:
    from api.app import create_app

    app = create_app(farm["settings"])
    with app.state.sessions.begin() as s:
        token_b = create_token(s, "b", "tests").token
        token_a = create_token(s, "a", "tests").token
    client = TestClient(app)
    store = farm["store"]
    store.put(join(store.prefix, "b", "in", "own.png"), store.get(farm["image_key"]), "image/png")
    a_plate = join(store.prefix, "a", "in", "plate.png")
    a_audio = join(store.prefix, "a", "in", "track.wav")
    ghost_key = farm["image_key"].replace(farm["job"], uuid.uuid4().hex)
    ghost_audio = a_audio.replace("track", "nothing")
    real = lines_referencing(farm["job"], farm["image_key"], a_audio, "a/in/plate.png")
    ghosts = lines_referencing(uuid.uuid4().hex, ghost_key, ghost_audio, "a/in/nothing.png")

    def refusal(line: dict[str, Any]) -> str:
        answer = client.post("/v1/batches", json={"jobs": [line]},
                             headers={"Authorization": f"Bearer {token_b}"})
        assert answer.status_code == 422, answer.text
        assert "this project" in answer.text, answer.text
        return json.dumps(answer.json(), sort_keys=True)

    seen, unseen = [refusal(line) for line in real], [refusal(line) for line in ghosts]
    # every way in, the colour-transfer reference nested in ops too, reads the same whether or
    # not project a has the object
    assert normalized(seen, farm["image_key"], a_plate, a_audio, "a/in/plate.png") == normalized(
        unseen, ghost_key, ghost_audio, "a/in/nothing.png")
    engine = make_engine(farm["pg_url"])
    with session_factory(engine)() as s:  # nothing written for b
        assert s.scalar(select(func.count()).select_from(Batch).where(Batch.project == "b")) == 0
    engine.dispose()
    mine = client.post("/v1/batches", json={"jobs": [
        {"kind": "edit", "op": "image", "source": {"job": farm["job"]}, "ops": [{"blur": 1}]},
        {"kind": "edit", "op": "image", "source": {"key": "in/plate.png"},
         "ops": [{"color_transfer": {"key": farm["image_key"]}}]}]},
        headers={"Authorization": f"Bearer {token_a}"})
    assert mine.status_code == 201, mine.text
