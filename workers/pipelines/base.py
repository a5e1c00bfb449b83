"""The pipeline interface: set up once on a device, run a batch, exactly one result per input."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from jobs.errors import PipelineError


@dataclass
class Artifact:
    """One output file of a job; ``encode`` runs on the upload pool, off the forward pass."""

    name: str  # file name inside the job's folder, e.g. image.png
    content_type: str
    encode: Callable[[], bytes]
    metadata: dict[str, str] | None = None


def constant(data: bytes) -> Callable[[], bytes]:
    """An ``encode`` for bytes that are ready already."""
    return lambda: data


class Pipeline:
    """Runs one kind of job. Subclasses write ``_setup`` and ``_run``."""

    kind: str = ""

    def __init__(self) -> None:
        self.device = "cpu"
        self.ready = False

    def setup(self, device: str) -> None:
        if not self.ready:
            self.device = device
            self._setup(device)
            self.ready = True

    def run(self, jobs: Sequence[dict[str, Any]], context: Sequence[dict[str, Any]]) -> list[list[Artifact]]:
        """Run ``jobs`` (their params) as one forward pass; one list of artifacts per job, in order."""
        if not self.ready:
            raise PipelineError(f"{type(self).__name__}.run before setup(); call setup(device) first")
        results = self._run(list(jobs), list(context))
        if len(results) != len(jobs):
            raise PipelineError(
                f"{type(self).__name__} returned {len(results)} results for {len(jobs)} jobs: "
                "a pipeline must return exactly one result per input, in order")
        return results

    def provenance(self) -> dict[str, Any]:
        """What every output of this pipeline records about the model that made it."""
        return {}

    def _setup(self, device: str) -> None:
        pass

    def _run(self, jobs: list[dict[str, Any]], context: list[dict[str, Any]]) -> list[list[Artifact]]:
        raise NotImplementedError
