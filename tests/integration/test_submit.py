"""Submission through the CLI: work units on the broker after commit; bad manifests write nothing."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import redis
from sqlalchemy import func, select

from jobs.db import make_engine, session_factory
from jobs.models import Batch, Job, Project
from tests.conftest import run_cli

BAD = "\n".join([
    '{"kind": "generate", "seed": 1}',
    '{"kind": "generate", "seed": "one"}',
    '{"kind": "generate", "seed": 2, "width": 100000}',
    '{"kind": "upscale", "seed": 3}',
    '{"kind": "generate", "seed": 4, "yaw": [1, 2], "colour": "red"}',
    '{"kind": "generate", "seed": 5',
    '{"kind": "generate"}',
    '"just a string"',
    '{"kind": "generate", "seed": 6, "truncation": true}',
]) + "\n"


def counts(url: str) -> tuple[int, int, int]:
    engine = make_engine(url)
    with session_factory(engine)() as s:
        result = tuple(s.scalar(select(func.count()).select_from(t)) for t in (Project, Batch, Job))
    engine.dispose()
    return result  # type: ignore[return-value]


def env_for(pg_url: str, redis_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"GENFARM_DATABASE_URL": pg_url, "GENFARM_BROKER_URL": redis_url,
            "GENFARM_STORAGE_URL": (tmp_path / "out").as_uri(),
            "GENFARM_DATA_DIR": str(tmp_path / "data"), **extra}


def test_bad_manifest_names_every_bad_line_and_writes_nothing(
        tmp_path: Path, pg_url: str, redis_url: str) -> None:
    env = env_for(pg_url, redis_url, tmp_path)
    assert run_cli("db", "upgrade", env=env).returncode == 0
    path = tmp_path / "bad.jsonl"
    path.write_text(BAD)
    result = run_cli("submit", str(path), "--project", "acme", env=env)
    assert result.returncode == 2
    err = result.stderr
    for expected in ["bad.jsonl:2: seed:", "bad.jsonl:3: width:", "bad.jsonl:4: kind: unknown kind",
                     "bad.jsonl:5: colour: unknown field", "bad.jsonl:6: invalid JSON",
                     "bad.jsonl:7: seed: missing", "bad.jsonl:8: expected a JSON object",
                     "bad.jsonl:9: truncation:", "nothing was submitted"]:
        assert expected in err, (expected, err)
    assert "bad.jsonl:1:" not in err and "Traceback" not in err
    assert counts(pg_url) == (0, 0, 0)
    assert redis.Redis.from_url(redis_url).keys("*") == []  # the broker never heard of it


def test_bad_manifest_on_the_embedded_default_touches_nothing(tmp_path: Path) -> None:
    env = {"GENFARM_DATA_DIR": str(tmp_path / "data")}
    assert run_cli("db", "upgrade", env=env).returncode == 0
    (tmp_path / "bad.csv").write_text("kind,seed,width\ngenerate,1,64\ngenerate,x,64\nrender,1,64\n")
    result = run_cli("submit", str(tmp_path / "bad.csv"), "--project", "acme", env=env)
    assert result.returncode == 2
    assert "bad.csv:3: seed:" in result.stderr and "bad.csv:4: kind:" in result.stderr
    assert counts(f"sqlite:///{tmp_path / 'data' / 'genfarm.db'}") == (0, 0, 0)
    queue = tmp_path / "data" / "broker" / "queue"
    assert not queue.exists() or not any(queue.iterdir())


def test_jobs_travel_as_work_units_grouped_by_batch_key(
        tmp_path: Path, pg_url: str, redis_url: str) -> None:
    env = env_for(pg_url, redis_url, tmp_path, GENFARM_UNIT_SIZE="32")
    assert run_cli("db", "upgrade", env=env).returncode == 0
    path = tmp_path / "jobs.jsonl"
    path.write_text('{"kind": "generate", "seed": {"range": [0, 70]}, "width": 64, "height": 64}\n'
                    '{"kind": "generate", "seed": {"range": [0, 10]}, "width": 96, "height": 64}\n')
    result = run_cli("submit", str(path), "--project", "acme", "--json", env=env)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["job_count"] == 80 and out["units"] == 4 and out["published"]
    client = redis.Redis.from_url(redis_url)
    from api.metrics import priority_lists

    messages = [json.loads(m) for key in priority_lists("aether")  # a queue per model, a list
                for m in client.lrange(key, 0, -1)]                 # per message priority
    assert len(messages) == 4  # 80 jobs, 4 messages: not one per job
    units = []
    for m in messages:
        assert m["headers"]["task"] == "genfarm.run_unit"
        args = json.loads(base64.b64decode(m["body"]))[0]
        units.append((args[1], len(args[0])))
    assert sorted(units) == sorted([("generate:aether:64x64", 32), ("generate:aether:64x64", 32),
                                    ("generate:aether:64x64", 6), ("generate:aether:96x64", 10)])
    engine = make_engine(pg_url)
    with session_factory(engine)() as s:
        assert s.scalar(select(func.count()).where(Job.published_at.is_(None))) == 0
    engine.dispose()
