"""How many processes `genfarm worker` runs and how many torch CPU threads each gets: one per
core of one thread on a CPU-only machine, one on a GPU one, an even share of the cores for an
explicit count, and the operator's GENFARM_CPU_THREADS or OMP_NUM_THREADS over all of it."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cli.main import cli
from cli.worker import cpu_cores, pool_size
from jobs.settings import Settings


@pytest.fixture(autouse=True)
def _no_thread_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("GENFARM_CPU_THREADS", raising=False)


def test_auto_on_a_cpu_is_a_process_per_core_of_one_thread() -> None:
    cores = cpu_cores()
    assert pool_size(Settings(device="cpu"), None, "prefork") == (cores, 1)


def test_an_explicit_count_shares_the_cores() -> None:
    cores = cpu_cores()
    assert pool_size(Settings(device="cpu"), 1, "prefork") == (1, cores)
    assert pool_size(Settings(device="cpu"), 2 * cores, "prefork") == (2 * cores, 1)


@pytest.mark.parametrize("pool", ["solo", "threads"])
def test_one_process_pools_get_every_core(pool: str) -> None:
    assert pool_size(Settings(device="cpu"), None, pool) == (1, cpu_cores())


def test_a_gpu_worker_runs_one_process_and_leaves_threads_to_torch() -> None:
    assert pool_size(Settings(device="cuda"), None, "prefork") == (1, None)
    assert pool_size(Settings(device="cuda:1"), 3, "prefork") == (3, None)


def test_the_operator_chooses_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    assert pool_size(Settings(device="cpu", cpu_threads=3), None, "prefork") == (cpu_cores(), 3)
    assert pool_size(Settings(device="cuda", cpu_threads=2), None, "prefork") == (1, 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")  # torch reads it: not overridden
    assert pool_size(Settings(device="cpu"), None, "prefork") == (cpu_cores(), None)


def test_hidden_gpus_are_no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    for hidden in ("", "-1"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert pool_size(Settings(), None, "prefork") == (cpu_cores(), 1)


@pytest.mark.parametrize("value, expected", [
    ("0", "0 processes: expected 1 to 256, or auto"),
    ("257", "257 processes: expected 1 to 256, or auto"),
    ("many", "'many' is neither a number of processes nor auto"),
    ("2.5", "'2.5' is neither a number of processes nor auto"),
])
def test_a_bad_concurrency_is_refused_before_anything_starts(value: str, expected: str) -> None:
    result = CliRunner().invoke(cli, ["worker", "--concurrency", value])
    assert result.exit_code == 2 and expected in result.output, result.output
