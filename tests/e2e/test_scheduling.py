"""Scheduling with a real worker process: a higher-priority batch sent behind a big low one
starts at the next unit, aging runs a low job while higher ones keep coming, a batch submitted
after a big cancel starts before the cancelled batch's messages are drained, and pause holds a
batch's queued jobs (running ones finish) until resume."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from jobs.db import upgrade
from jobs.models import utcnow
from tests.conftest import Workers, run_cli
from tests.e2e.test_faults import farm_env
from tests.helpers import Db, submit

ONE = ("--max-batch", "16", "--concurrency", "1")


def generate(n: int, priority: int, size: int = 64, first: int = 0) -> dict[str, object]:
    """``n`` generate jobs from seed ``first`` (batches that must run, not reuse an earlier
    batch's outputs, take seeds of their own)."""
    return {"kind": "generate", "seed": {"range": [first, first + n]}, "width": size,
            "height": size, "priority": priority}


def claims(db: Db, batch: str) -> list[object]:
    return sorted(e.at for e in db.events(batch) if e.to_status == "running")


def test_a_high_priority_batch_sent_behind_a_big_low_one_starts_at_the_next_unit(
        tmp_path: Path, workers: Workers, pg_url: str, redis_url: str) -> None:
    env = farm_env(tmp_path, pg_url, redis_url, (tmp_path / "out").as_uri())
    upgrade(pg_url)
    low = submit(env, tmp_path, generate(640, -100))
    db = Db(pg_url)
    workers.start(env, *ONE)
    db.wait(low, workers, until=lambda d: d.counts(low).get("succeeded", 0) >= 32)
    high = submit(env, tmp_path, generate(10, 500, first=10_000))
    db.wait(high, workers)
    # when the high batch came in: its rows' time, not the CLI's start (while the CLI starts,
    # a fast worker runs several more low units)
    sent = db.finished(high).created_at  # type: ignore[union-attr]
    first_high = claims(db, high)[0]
    high_done = db.finished(high).finished_at  # type: ignore[union-attr]
    low_claims = claims(db, low)
    # between the high batch's submission and its first claim, at most the one unit that was
    # being claimed as it came in: never the rest of the low batch's 640
    between = [t for t in low_claims if sent <= t < first_high]
    assert len(between) <= 64, len(between)
    ran_meanwhile = [t for t in low_claims if sent <= t <= high_done]
    unclaimed_then = 640 - len([t for t in low_claims if t < sent])
    left = 640 - len([t for t in low_claims if t <= high_done])
    print(f"high batch done; low jobs claimed meanwhile {len(ran_meanwhile)}, "
          f"claimed before its first claim {len(between)}, still waiting {left}")
    assert left >= unclaimed_then - 2 * 64 - 64, left  # it did not wait for the low batch
    db.wait(low, workers)
    assert db.counts(low) == {"succeeded": 640} and db.counts(high) == {"succeeded": 10}
    db.close()


def test_aging_runs_a_low_job_while_higher_ones_keep_coming(
        tmp_path: Path, workers: Workers, pg_url: str, redis_url: str) -> None:
    """With one point per 5 ms, a job at -1000 goes before new ones at 1000 once it has
    waited 10 s: a stream of high batches never holds it back for good."""
    env = farm_env(tmp_path, pg_url, redis_url, (tmp_path / "out").as_uri(),
                   GENFARM_PRIORITY_AGING_SECONDS="0.005")
    upgrade(pg_url)
    db = Db(pg_url)
    # deep enough that a fast worker never empties it between two submissions (each CLI run
    # takes a second or two): the low job must run by its rank, not on an empty queue
    stream = [submit(env, tmp_path, generate(1024, 1000, first=10_000))]
    low = submit(env, tmp_path, {"kind": "generate", "seed": 1, "width": 64, "height": 64,
                                 "priority": -1000})
    workers.start(env, *ONE)
    deadline = time.monotonic() + 180
    while db.finished(low) is None:  # keep the queue full of work at 1000
        assert time.monotonic() < deadline, workers.logs()
        if sum(db.counts(b).get("queued", 0) for b in stream) < 600:
            stream.append(submit(env, tmp_path, generate(1024, 1000,
                                                         first=10_000 + 1024 * len(stream))))
        time.sleep(0.25)
    ran = claims(db, low)[0]
    # high jobs submitted before it ran that still waited for it: aging, not an empty queue
    passed = sum(1 for b in stream for j in db.jobs(b)
                 if j.created_at < ran and (j.started_at is None or j.started_at > ran))
    print(f"low job ran after {len(stream)} high batches, ahead of {passed} high jobs")
    assert passed >= 64, passed
    db.close()


def test_a_batch_sent_after_a_big_cancel_starts_before_the_cancelled_messages_drain(
        tmp_path: Path, workers: Workers) -> None:
    """The embedded farm (SQLite, the filesystem broker): 3,000 jobs cancelled leave 47
    messages; two 5-job batches sent after run on the first of them."""
    data = tmp_path / "data"
    env = {"GENFARM_DATA_DIR": str(data), "GENFARM_MODEL_PROFILE": "tiny",
           "GENFARM_RECONCILE_INTERVAL": "1"}
    assert run_cli("db", "upgrade", env=env).returncode == 0
    big = submit(env, tmp_path, {"kind": "noop", "tag": {"range": [0, 3000]}})
    assert run_cli("cancel", big, env=env).returncode == 0
    small = [submit(env, tmp_path, {"kind": "noop", "tag": {"range": [0, 5]}}) for _ in range(2)]
    queue = data / "broker" / "queue"
    waiting = len(list(queue.iterdir()))
    assert waiting == 47 + 2, waiting
    db = Db(f"sqlite:///{data / 'genfarm.db'}")
    workers.start(env, *ONE)
    for batch in small:
        db.wait(batch, workers, timeout=120)
    left = len(list(queue.iterdir()))
    print(f"both small batches done with {left} of {waiting} messages still in the broker")
    assert left >= waiting - 4, left  # they ran on the first messages, not after the drain
    assert db.counts(small[0]) == db.counts(small[1]) == {"succeeded": 5}
    db.close()


def test_pause_holds_queued_jobs_and_resume_runs_them(
        tmp_path: Path, workers: Workers, pg_url: str, redis_url: str) -> None:
    env = farm_env(tmp_path, pg_url, redis_url, (tmp_path / "out").as_uri())
    upgrade(pg_url)
    # enough jobs that some are still queued when `genfarm pause` has started (a unit is 64)
    batch = submit(env, tmp_path, generate(480, 0))
    db = Db(pg_url)
    workers.start(env, *ONE)
    db.wait(batch, workers, until=lambda d: d.counts(batch).get("succeeded", 0) >= 16)
    paused = run_cli("pause", batch[:8], env=env)
    assert paused.returncode == 0 and "paused" in paused.stdout, paused.stderr
    held = int(paused.stdout.split()[1])
    assert held > 0
    db.wait(batch, workers, until=lambda d: not d.counts(batch).get("running"))
    at = utcnow()
    time.sleep(3)  # workers keep polling; none claims a paused job
    counts = db.counts(batch)
    assert counts.get("paused") == held and not counts.get("queued"), counts
    assert not [e for e in db.events(batch) if e.to_status == "running" and e.at > at]
    shown = run_cli("status", batch, env=env)
    assert "paused" in shown.stdout and f"paused {held}" in shown.stdout, shown.stdout
    resumed = run_cli("resume", batch, env=env)
    assert resumed.returncode == 0 and f"resumed {held}" in resumed.stdout, resumed.stderr
    db.wait(batch, workers)
    assert db.counts(batch) == {"succeeded": 480}
    db.close()


def test_a_dry_run_estimates_the_real_run_and_a_budget_refuses_an_overrun(
        tmp_path: Path, workers: Workers, pg_url: str, redis_url: str) -> None:
    import json

    env = farm_env(tmp_path, pg_url, redis_url, (tmp_path / "out").as_uri())
    upgrade(pg_url)
    db = Db(pg_url)
    # passes of 16 jobs take about 0.1 s here: enough of them that a process starting or
    # ending beside the worker on this machine's two cores stays a small part of either run
    n = 384
    first = submit(env, tmp_path, generate(n, 0, size=128))
    workers.start(env, *ONE)
    db.wait(first, workers)
    manifest = tmp_path / "next.jsonl"
    manifest.write_text(json.dumps({"kind": "generate", "seed": {"range": [1000, 1000 + n]},
                                    "width": 128, "height": 128}) + "\n")
    dry = run_cli("submit", str(manifest), "-p", "acme", "--dry-run", "--json", env=env)
    assert dry.returncode == 0, dry.stderr
    estimate = json.loads(dry.stdout)
    [group] = estimate["groups"]
    # the first pass of a key in a worker process, or after it sat idle, is not counted
    assert group["jobs"] == n and group["basis"].startswith("measured: "), group
    assert group["basis"].endswith(" jobs on cpu") and group["basis"] != f"measured: {n} jobs on cpu"
    shown = run_cli("usage", "-p", "acme", "--json", env=env)
    assert json.loads(shown.stdout)[0]["jobs"] == n  # the dry run wrote nothing
    text = run_cli("submit", str(manifest), "-p", "acme", "--dry-run", env=env).stdout
    assert "dry run: nothing was written" in text and f"{n} jobs" in text, text
    second = json.loads(run_cli("submit", str(manifest), "-p", "acme", "--json",
                                env=env).stdout)["batch_id"]
    db.wait(second, workers)
    measured = sum(j.device_seconds for j in db.jobs(second))
    before = sum(j.device_seconds for j in db.jobs(first))
    print(f"dry run estimated {estimate['device_seconds']:.2f} device-seconds, the run "
          f"measured {measured:.2f}, the run it was estimated from {before:.2f}")
    # the estimate is the measured batch's passes (all but its first), scaled to the manifest
    assert abs(estimate["device_seconds"] - before) <= 0.3 * before
    # and it predicts the next run: within 2-6% in eight runs alone, but this shared two-vCPU
    # machine's pace swings from one minute to the next (a bare loop of this model made 52 to
    # 91 images/s within an hour), and once in a full suite the next run took 0.70 of the
    # estimate; a factor of 2 either way still fails an estimate of the wrong work
    assert measured / 2 <= estimate["device_seconds"] <= measured * 2
    # a budget smaller than the next run's estimate refuses it, with the numbers, exit 2
    spent = json.loads(run_cli("usage", "-p", "acme", "--json", env=env).stdout)[0]
    assert spent["device_seconds"] == pytest.approx(
        sum(j.device_seconds for b in (first, second) for j in db.jobs(b)), abs=1e-3)
    assert run_cli("budget", "set", "acme", f"{measured / 2:.3f}", env=env).returncode == 0
    refused = run_cli("submit", str(manifest), "-p", "acme", "--force", env=env)
    assert refused.returncode == 2, refused.stderr
    assert "budget: project acme has" in refused.stderr and "needs an estimated" in refused.stderr
    assert json.loads(run_cli("usage", "-p", "acme", "--json", env=env).stdout)[0]["jobs"] == 2 * n
    db.close()


def test_a_rerun_reuses_every_output_with_no_worker_pass(
        tmp_path: Path, workers: Workers, pg_url: str, redis_url: str) -> None:
    import json

    env = farm_env(tmp_path, pg_url, redis_url, (tmp_path / "out").as_uri())
    upgrade(pg_url)
    db = Db(pg_url)
    lines = [generate(24, 0), {"kind": "edit", "op": "rerender", "source": {"line": 1},
                               "yaw": 45}]
    first = submit(env, tmp_path, *lines)
    worker = workers.start(env, *ONE)
    db.wait(first, workers)
    workers.stop(worker)  # no worker from here on: a rerun must need none
    manifest = tmp_path / "again.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    dry = json.loads(run_cli("submit", str(manifest), "-p", "acme", "--dry-run", "--json",
                             env=env).stdout)
    assert (dry["reused"], dry["jobs"], dry["device_seconds"]) == (48, 0, 0.0), dry
    rerun = run_cli("submit", str(manifest), "-p", "acme", env=env)
    assert rerun.returncode == 0 and "48 reuse the outputs" in rerun.stderr, rerun.stderr
    again = rerun.stdout.strip()
    assert db.finished(again) is not None  # finished at submission: nothing to run
    assert db.counts(again) == {"succeeded": 48}
    assert sum(j.device_seconds for j in db.jobs(again)) == 0.0
    assert not [e for e in db.events(again) if e.to_status == "running"]
    old = {j.index: j.id for j in db.jobs(first)}
    assert {j.index: j.reused_from for j in db.jobs(again)} == old
    shown = run_cli("status", again, env=env).stdout
    assert "succeeded 48" in shown and "(reused 48)" in shown, shown
    pulled = run_cli("pull", again, str(tmp_path / "got"), env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert len(list((tmp_path / "got").glob("*/image.png"))) == 48
    used = json.loads(run_cli("usage", "-p", "acme", "--json", env=env).stdout)[0]
    assert used["reused"] == 48 and used["succeeded"] == 96
    forced = run_cli("submit", str(manifest), "-p", "acme", "--force", env=env)
    assert forced.returncode == 0 and "reuse" not in forced.stderr, forced.stderr
    assert db.counts(forced.stdout.strip()) == {"queued": 48}
    db.close()


def test_a_generate_edit_video_chain_across_two_submissions_with_a_failing_parent(
        tmp_path: Path, workers: Workers, pg_url: str, redis_url: str) -> None:
    env = farm_env(tmp_path, pg_url, redis_url, (tmp_path / "out").as_uri())
    upgrade(pg_url)
    db = Db(pg_url)
    first = submit(env, tmp_path, generate(2, 0),
                   {"kind": "edit", "op": "rerender", "source": {"line": 1}, "yaw": 30,
                    "after": [1]})
    second = submit(env, tmp_path,
                    {"kind": "video", "mode": "orbit", "seed": 1, "frames": 8, "width": 64,
                     "height": 64, "after": [first[:8]]},
                    {"kind": "noop", "fail": "always", "max_attempts": 1},
                    {"kind": "video", "mode": "orbit", "seed": 2, "frames": 8, "width": 64,
                     "height": 64, "after": [2]})
    shown = run_cli("status", second, env=env).stdout  # no worker yet: they wait
    assert "waiting 2" in shown, shown
    workers.start(env, *ONE)
    db.wait(second, workers)
    jobs = {j.line: j for j in db.jobs(second)}
    assert db.counts(first) == {"succeeded": 4}
    assert (jobs[1].status, jobs[2].status, jobs[3].status) == ("succeeded", "failed", "failed")
    assert jobs[3].error == f"upstream failed: line 2 of batch {second} has 1 failed"
    last_parent = max(j.finished_at for j in db.jobs(first))  # type: ignore[type-var]
    assert jobs[1].started_at > last_parent  # type: ignore[operator]
    edits = [j for j in db.jobs(first) if j.line == 2]
    assert all(j.started_at > max(g.finished_at for g in db.jobs(first)  # type: ignore[operator]
                                  if g.line == 1) for j in edits)
    assert db.finished(second).status == "failed"  # type: ignore[union-attr]
    # a batch source with a filter: the succeeded generate job of seed 1, re-rendered
    third = submit(env, tmp_path, {"kind": "edit", "op": "rerender", "yaw": 90, "source": {
        "batch": first, "where": {"kind": "generate", "seed": 1}}})
    db.wait(third, workers)
    [edit] = db.jobs(third)
    [seed1] = [j for j in db.jobs(first) if j.kind == "generate" and j.params["seed"] == 1]
    assert edit.status == "succeeded" and edit.params["source"]["job"] == seed1.id
    assert [o.name for o in db.outputs(third)] == ["image.png"]
    db.close()
