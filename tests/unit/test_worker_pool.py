"""How many processes `genfarm worker` runs and how many torch CPU threads each gets: one per
core of one thread on a CPU-only machine, one per GPU on a GPU one (as many as the device nodes
and CUDA_VISIBLE_DEVICES show), an even share of the cores for an explicit count, and the
operator's GENFARM_CPU_THREADS or OMP_NUM_THREADS over all of it."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from cli.worker import cpu_cores, pool_size, visible_gpus
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


def test_a_gpu_worker_runs_a_process_per_gpu_and_leaves_threads_to_torch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    cores = cpu_cores()
    # one GPU: its process leaves torch its own threads; several share the cores for the CPU
    # work beside their GPUs
    assert pool_size(Settings(device="cuda"), None, "prefork", tmp_path) == (1, None)
    assert pool_size(Settings(device="cuda:1"), 3, "prefork") == (3, max(1, cores // 3))
    for accelerator in ("mps", "xpu"):  # one device: one process, not one per core
        assert pool_size(Settings(device=accelerator), None, "prefork", tmp_path) == (1, None)
    for name in ("nvidia0", "nvidia1", "nvidia2", "nvidia3", "nvidiactl", "nvidia-uvm",
                 "nvidia-modeset"):  # four GPUs, and the driver's other nodes
        (tmp_path / name).touch()
    four = (4, max(1, cores // 4))
    assert pool_size(Settings(), None, "prefork", tmp_path) == four
    assert pool_size(Settings(device="cuda"), None, "prefork", tmp_path) == four
    assert pool_size(Settings(device="cuda:2"), None, "prefork", tmp_path) == (1, None)
    assert pool_size(Settings(), None, "solo", tmp_path) == (1, None)
    assert pool_size(Settings(), 2, "prefork", tmp_path) == (2, max(1, cores // 2))


@pytest.mark.parametrize("listed, gpus", [
    ("0,1", 2), ("3", 1), ("GPU-8f1c2b9e,GPU-0a7d", 2), ("1,-1,2", 1), ("-1", 0), ("", 0),
    ("0,1,2,3,4,5", 4)])
def test_cuda_visible_devices_says_how_many_gpus_a_worker_uses(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listed: str, gpus: int) -> None:
    for i in range(4):
        (tmp_path / f"nvidia{i}").touch()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", listed)
    assert visible_gpus(Settings(), tmp_path) == gpus
    assert visible_gpus(Settings(device="cpu"), tmp_path) == 0


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
