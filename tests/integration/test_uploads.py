"""Uploads (plates, masks, audio) through the CLI (its own process) and the API, on a local
folder and on the S3 endpoint: the key a manifest then names resolves in the uploading project
only; hostile folders and names are refused or made safe, and nothing lands outside the
project's folder or in a batch's; identical bytes are not stored again."""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from jobs.db import upgrade
from jobs.settings import Settings
from jobs.tokens import create_token
from storage import open_storage
from storage.backends.local import LocalStorage
from storage.errors import BadKey
from storage.uploads import content_type, upload
from tests.conftest import S3_ENV, run_cli

BODY_LIMIT = 64 * 1024
BATCH_LIKE = "0123456789abcdef0123456789abcdef"


def png(colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buf, format="PNG")
    return buf.getvalue()


def wav() -> bytes:
    data = b"\0\0" * 800
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, 1, 8000, 16000, 2, 16) + b"data"
            + struct.pack("<I", len(data)) + data)


@pytest.fixture(params=["local", "s3"])
def farm(request: pytest.FixtureRequest, tmp_path: Path, pg_url: str) -> dict[str, Any]:
    env = {"GENFARM_DATABASE_URL": pg_url, "GENFARM_DATA_DIR": str(tmp_path / "data")}
    if request.param == "local":
        env["GENFARM_STORAGE_URL"] = (tmp_path / "out").as_uri()
    else:
        bucket = request.getfixturevalue("s3_bucket")
        env.update(S3_ENV, GENFARM_STORAGE_URL=f"s3://{bucket}/outputs",
                   GENFARM_S3_ENDPOINT_URL=request.getfixturevalue("s3_endpoint"))
    upgrade(pg_url)
    settings = Settings(database_url=pg_url, data_dir=tmp_path / "data",
                        storage_url=env["GENFARM_STORAGE_URL"],
                        s3_endpoint_url=env.get("GENFARM_S3_ENDPOINT_URL"),
                        api_max_body_bytes=BODY_LIMIT, api_rate_per_minute=6000,
                        api_rate_burst=1000)
    store = open_storage(settings.resolved_storage_url(), endpoint_url=settings.s3_endpoint_url)
    files = tmp_path / "files"
    files.mkdir()
    return {"env": env, "settings": settings, "store": store, "tmp": tmp_path, "files": files,
            "backend": request.param}


def everything(store: Any) -> set[str]:
    return set(store.list(""))


def project_folder(store: Any, project: str) -> str:
    return f"{store.prefix}/{project}/" if store.prefix else f"{project}/"


LINES = [{"kind": "edit", "op": "image", "source": {"key": "in/plate.png"}, "ops": [{"blur": 1}]},
         {"kind": "video", "mode": "beats", "seed": 1, "audio": {"key": "in/track.wav"}}]


def submit_errors(farm: dict[str, Any], project: str, lines: list[dict[str, Any]]) -> list[str]:
    path = farm["tmp"] / f"{uuid.uuid4().hex}.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    result = run_cli("submit", str(path), "--project", project, env=farm["env"])
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    return [line.split(": ", 1)[1] for line in result.stderr.splitlines()
            if line.startswith(path.name + ":")]


def test_cli_uploads_what_a_manifest_then_references(farm: dict[str, Any]) -> None:
    store, files = farm["store"], farm["files"]
    (files / "plate.png").write_bytes(png())
    (files / "track.wav").write_bytes(wav())
    result = run_cli("upload", str(files / "plate.png"), str(files / "track.wav"),
                     "--project", "a", "--json", env=farm["env"])
    assert result.returncode == 0, result.stderr
    done = {r["key"]: r for r in json.loads(result.stdout)}
    assert set(done) == {"in/plate.png", "in/track.wav"}
    for key, data, kind in (("in/plate.png", png(), "image/png"),
                            ("in/track.wav", wav(), "audio/wav")):
        row = done[key]
        assert row["sha256"] == hashlib.sha256(data).hexdigest() and row["bytes"] == len(data)
        assert row["content_type"] == kind and row["skipped"] is False
        assert row["storage_key"] == project_folder(store, "a") + key
        assert store.get(row["storage_key"], sha256=row["sha256"]) == data
        if farm["backend"] == "s3":  # recorded as object metadata, like outputs
            head = store.head(row["storage_key"])
            assert head["Metadata"]["sha256"] == row["sha256"]
            assert head["ContentType"] == kind
    # the plain output: the key to put in a manifest, its sha256 and size
    again = run_cli("upload", str(files / "plate.png"), "--project", "a", env=farm["env"])
    assert again.returncode == 0, again.stderr
    sha = hashlib.sha256(png()).hexdigest()
    assert again.stdout.startswith(f"in/plate.png  sha256:{sha}  {len(png())} bytes")
    assert "unchanged" in again.stdout  # identical bytes: skipped

    ok = run_cli("submit", "-", "--project", "a", "--json", env=farm["env"],
                 input="\n".join(json.dumps(line) for line in LINES).encode())
    assert ok.returncode == 0, ok.stderr
    # another project: the same keys are refused with the words for keys that exist nowhere
    theirs = submit_errors(farm, "b", LINES)
    ghosts = submit_errors(farm, "b", [
        {**LINES[0], "source": {"key": "in/nothing.png"}},
        {**LINES[1], "audio": {"key": "in/nothing.wav"}}])
    assert len(theirs) == 2 and all("this project" in m for m in theirs), theirs
    assert [m.replace("plate.png", "X").replace("track.wav", "X") for m in theirs] == \
        [m.replace("nothing.png", "X").replace("nothing.wav", "X") for m in ghosts]
    # and with the project's folder spelt out
    spelt = submit_errors(farm, "b", [{**LINES[0], "source": {"key": "a/in/plate.png"}}])
    assert spelt == [m.replace("in/plate.png", "a/in/plate.png") for m in theirs[:1]]


def test_reupload_skips_identical_bytes_and_replaces_changed_ones(farm: dict[str, Any]) -> None:
    store, files = farm["store"], farm["files"]
    path = files / "mask.png"
    path.write_bytes(png((0, 0, 0)))
    first = run_cli("upload", str(path), "--project", "a", "--prefix", "masks/sh010", "--json",
                    env=farm["env"])
    assert first.returncode == 0, first.stderr
    [row] = json.loads(first.stdout)
    assert row["key"] == "masks/sh010/mask.png" and not row["skipped"]
    second = json.loads(run_cli("upload", str(path), "--project", "a", "--prefix",
                                "masks/sh010/", "--json", env=farm["env"]).stdout)
    assert second[0]["skipped"] and second[0]["sha256"] == row["sha256"]
    path.write_bytes(png((255, 255, 255)))
    third = json.loads(run_cli("upload", str(path), "--project", "a", "--prefix",
                               "masks/sh010", "--json", env=farm["env"]).stdout)
    assert not third[0]["skipped"] and third[0]["sha256"] != row["sha256"]
    assert store.get(row["storage_key"], sha256=third[0]["sha256"]) == png((255, 255, 255))


HOSTILE_PREFIXES = ["../x", "/etc", "a/../../b", "in/..", "in\\..\\..", "a//b", "", "/",
                    BATCH_LIKE, BATCH_LIKE.upper() + "/in", "in/" + "p" * 200, "a",
                    "./in", "ïn/", "in/\u202e"]


@pytest.mark.parametrize("prefix", HOSTILE_PREFIXES)
def test_cli_refuses_hostile_prefixes_before_anything_is_stored(tmp_path: Path,
                                                                 prefix: str) -> None:
    out = tmp_path / "out"
    env = {"GENFARM_DATA_DIR": str(tmp_path / "data"), "GENFARM_STORAGE_URL": out.as_uri()}
    (tmp_path / "plate.png").write_bytes(png())
    result = run_cli("upload", str(tmp_path / "plate.png"), "--project", "a", "--prefix", prefix,
                     env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "prefix" in result.stderr and "nothing was uploaded" in result.stderr, result.stderr
    assert not any(p.is_file() for p in tmp_path.rglob("*") if p.name != "plate.png")


def test_cli_makes_names_safe_or_refuses_them(farm: dict[str, Any]) -> None:
    store, files = farm["store"], farm["files"]
    safe = {"Plate 01 (final).png": "in/Plate_01_final.png",
            "ｐｌａｔｅ２.png": "in/plate2.png",  # fullwidth letters fold to ASCII
            "café.wav": "in/cafe.wav",
            "..\\..\\evil.png".replace("\\", "_"): "in/evil.png",
            ".hidden.png": "in/hidden.png",
            "\u202egnp.exe": "in/gnp.exe",  # a right-to-left override is dropped
            "x" * 120 + ".png": "in/" + "x" * 120 + ".png"}
    for name in safe:
        (files / name).write_bytes(name.encode())
    result = run_cli("upload", *(str(files / n) for n in safe), "--project", "a", "--json",
                     env=farm["env"])
    assert result.returncode == 0, result.stderr
    assert {r["key"] for r in json.loads(result.stdout)} == set(safe.values())
    refused = ["a\\..\\..\\b.png", "new\nline.png", "esc\x1b.png", "日本.png", "x" * 200 + ".png",
               "a\u2215b.png".replace("\u2215", "\uff0f")]  # fullwidth solidus: a '/'
    before = everything(store)
    for name in refused:
        (files / name).write_bytes(b"x")
        one = run_cli("upload", str(files / name), "--project", "a", env=farm["env"])
        assert one.returncode == 2 and "file name" in one.stderr, (name, one.stderr)
        assert "nothing was uploaded" in one.stderr and "\x1b" not in one.stderr
    assert everything(store) == before
    # missing files and folders are refused before anything is stored, each named
    mixed = run_cli("upload", str(files / "Plate 01 (final).png"), str(files / "nope.png"),
                    str(files), "--project", "a", "--prefix", "other", env=farm["env"])
    assert mixed.returncode == 2, mixed.stderr
    assert "nope.png: no such file" in mixed.stderr and "is a folder" in mixed.stderr
    assert everything(store) == before
    assert all(k.startswith(project_folder(store, "a") + "in/") for k in before)


def test_a_terminal_sees_a_progress_line_per_file(tmp_path: Path) -> None:
    import os
    import pty
    import subprocess

    from tests.conftest import BIN

    for name in ("a.png", "b.wav"):
        (tmp_path / name).write_bytes(png() if name.endswith("png") else wav())
    env = {**os.environ, "GENFARM_DATA_DIR": str(tmp_path / "data"),
           "GENFARM_STORAGE_URL": (tmp_path / "out").as_uri()}
    main, side = pty.openpty()
    proc = subprocess.run([str(BIN / "genfarm"), "upload", "a.png", "b.wav", "--project", "a"],
                          cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=side, text=True,
                          timeout=120)
    os.close(side)
    seen = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # EIO: the terminal's other side is closed
            break
        if not chunk:
            break
        seen += chunk
    os.close(main)
    assert proc.returncode == 0, seen
    assert b"[1/2] a.png -> in/a.png" in seen and b"[2/2] b.wav -> in/b.wav" in seen, seen
    assert [line.split()[0] for line in proc.stdout.splitlines()] == ["in/a.png", "in/b.wav"]


def api(farm: dict[str, Any]) -> tuple[TestClient, dict[str, str], dict[str, str]]:
    from api.app import create_app

    app = create_app(farm["settings"])
    with app.state.sessions.begin() as s:
        a = create_token(s, "a", "tests").token
        b = create_token(s, "b", "tests").token
    return (TestClient(app), {"Authorization": f"Bearer {a}"},
            {"Authorization": f"Bearer {b}"})


def test_api_uploads_list_and_reference(farm: dict[str, Any]) -> None:
    client, a, b = api(farm)
    store = farm["store"]
    r = client.put("/v1/uploads/in/plate.png", content=png(),
                   headers={**a, "Content-Type": "text/html"})  # the client's type is not kept
    assert r.status_code == 201, r.text
    assert r.json() == {"key": "in/plate.png", "sha256": hashlib.sha256(png()).hexdigest(),
                        "bytes": len(png()), "content_type": "image/png", "skipped": False}
    r = client.put("/v1/uploads/in/plate.png", content=png(), headers=a)
    assert r.status_code == 200 and r.json()["skipped"], r.text
    r = client.put("/v1/uploads/in/track.wav", content=wav(), headers=a)
    assert r.status_code == 201 and r.json()["content_type"] == "audio/wav", r.text
    r = client.put("/v1/uploads/audio/long%20name.wav", content=wav(), headers=a)
    assert r.status_code == 201 and r.json()["key"] == "audio/long_name.wav", r.text
    assert store.get(project_folder(store, "a") + "in/plate.png") == png()

    listing = client.get("/v1/uploads", headers=a).json()
    assert listing == {"items": [{"key": "in/plate.png", "bytes": len(png())},
                                 {"key": "in/track.wav", "bytes": len(wav())}],
                       "truncated": False}
    assert client.get("/v1/uploads?prefix=in/&limit=1", headers=a).json()["truncated"]
    assert client.get("/v1/uploads?prefix=audio", headers=a).json()["items"] == [
        {"key": "audio/long_name.wav", "bytes": len(wav())}]
    assert client.get("/v1/uploads", headers=b).json() == {"items": [], "truncated": False}
    assert client.get("/v1/uploads?prefix=../a/in", headers=b).status_code == 400
    assert client.get("/v1/uploads").status_code == 401
    assert client.put("/v1/uploads/in/x.png", content=b"x").status_code == 401

    r = client.put("/v1/uploads/in/big.bin", content=b"x" * (BODY_LIMIT + 1), headers=a)
    assert r.status_code == 413, r.text
    assert not store.exists(project_folder(store, "a") + "in/big.bin")

    ok = client.post("/v1/batches", json={"jobs": LINES}, headers=a)
    assert ok.status_code == 201, ok.text

    def refusal(lines: list[dict[str, Any]]) -> list[str]:
        r = client.post("/v1/batches", json={"jobs": lines}, headers=b)
        assert r.status_code == 422, r.text
        return [e["message"] for e in r.json()["errors"]]

    theirs = refusal(LINES)
    ghosts = refusal([{**LINES[0], "source": {"key": "in/nothing.png"}},
                      {**LINES[1], "audio": {"key": "in/nothing.wav"}}])
    assert all("this project" in m for m in theirs), theirs
    assert [re.sub(r"in/\w+\.(png|wav)", "X", m) for m in theirs] == \
        [re.sub(r"in/\w+\.(png|wav)", "X", m) for m in ghosts]


HOSTILE_PATHS = ["%2E%2E/x.png", "in/%2E%2E/%2E%2E/x.png", "/etc/passwd", "a/%2e%2e/%2e%2e/b",
                 "in/%2e%2e", "in/a%5C..%5C..%5Cb.png", "in%5Cx/y.png", "in/a%00.png",
                 f"{BATCH_LIKE}/manifest.jsonl", f"{BATCH_LIKE}/{BATCH_LIKE}/image.png",
                 "in/" + "n" * 300 + ".png", "in/", "x.png", "in//x.png", "in/%1b%5b2J.png",
                 "in/%EF%BC%8E%EF%BC%8E%EF%BC%8Fx.png", "a/in/x.png", "in/%E6%97%A5.png",
                 "in/...", "in/%2Fx.png"]


def test_api_refuses_hostile_paths_and_nothing_leaves_the_project(farm: dict[str, Any]) -> None:
    client, a, _ = api(farm)
    store = farm["store"]
    assert client.put("/v1/uploads/in/ok.png", content=png(), headers=a).status_code == 201
    before = everything(store)
    # on S3 the store's prefix too: outputs/a/in/x.png in a manifest means a's in/x.png
    spelt = [f"{store.prefix}/a/in/x.png"] if store.prefix else []
    for path in HOSTILE_PATHS + spelt:
        r = client.put(f"/v1/uploads/{path}", content=png((1, 2, 3)), headers=a)
        assert r.status_code in (400, 404, 422), (path, r.status_code, r.text)
        assert "Traceback" not in r.text and "\x1b" not in r.text
    assert everything(store) == before == {project_folder(store, "a") + "in/ok.png"}
    if farm["backend"] == "local":  # nothing beside the storage folder either
        assert {p.name for p in (farm["tmp"] / "out").parent.iterdir()} <= {"out", "data",
                                                                           "files"}


@pytest.mark.parametrize(("prefix", "name"), [
    ("../x", "a.png"), ("/etc", "passwd"), ("a/../../b", "c.png"), ("in/..", "a.png"),
    ("in\\..", "a.png"), ("in\x00", "a.png"), ("in", "a\x00.png"), ("in", "../../a.png"),
    ("in", "..\\..\\a.png"), ("in", ""), ("in", ".."), ("in", "n" * 129), (BATCH_LIKE, "a.png"),
    (f"{BATCH_LIKE}/", "manifest.jsonl"), ("in/" * 9, "a.png"), ("p", "a.png"),
    ("in", "\uff0e\uff0e\uff0fa.png"), ("in\u2024\u2024", "a.png"), ("", "a.png"),
])
def test_upload_function_never_writes_outside_the_projects_folder(
        tmp_path: Path, prefix: str, name: str) -> None:
    root = tmp_path / "store"
    store = LocalStorage(root)
    with pytest.raises(BadKey) as refused:
        upload(store, "p", name, b"data", prefix)
    assert "prefix" in str(refused.value) or "file name" in str(refused.value), refused.value
    assert not root.exists() or not any(root.rglob("*"))


def test_content_types_come_from_the_bytes_then_the_name() -> None:
    assert content_type("x.bin", png()) == "image/png"
    assert content_type("x.png", wav()) == "audio/wav"
    assert content_type("x.exr", b"\0\0") == "image/x-exr"
    assert content_type("noext", b"\0\0") == "application/octet-stream"
