"""Families run directly, as a worker process runs them: built from the models catalog, set up
on the CPU, fed real JobContexts over a real local storage."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import Any

from jobs.catalog import load_catalog
from jobs.settings import Settings
from storage import open_storage
from storage.base import Storage
from workers.family import Family, JobContext, Result
from workers.runner import default_dtype

_scratch: Storage | None = None


def scratch() -> Storage:
    global _scratch
    if _scratch is None:
        _scratch = open_storage("file://" + tempfile.mkdtemp(prefix="genfarm-test-"))
    return _scratch


def family(profile: str = "tiny", model: str = "aether", **settings: Any) -> Family:
    cfg = Settings(model_profile=profile, **settings)
    catalog = load_catalog(cfg)
    fam: Family = catalog.family(model).load_worker()(catalog.models[model], cfg)
    fam.setup("cpu", default_dtype(cfg, "cpu"))
    return fam


def context(kind: str, params: dict[str, Any], i: int = 0, *, storage: Storage | None = None,
            project: str = "p", batch_id: str = "b1", attempt: int = 1,
            still_held: Callable[[], bool] = lambda: True,
            progress: Callable[[float], bool] = lambda done: True) -> JobContext:
    return JobContext(f"j{i}", batch_id, project, attempt, kind, params, storage or scratch(),
                      still_held, progress)


def run(fam: Family, kind: str, jobs: list[dict[str, Any]]) -> list[Result]:
    return fam.run([context(kind, job, i) for i, job in enumerate(jobs)])
