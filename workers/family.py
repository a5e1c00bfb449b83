"""The worker side of a model family: set up once per process on a device, run a batch of
jobs, exactly one result per job. Plugins subclass ``Family``; the runner gives each job a typed
``JobContext`` and reads ``Retry`` / ``PermanentError`` instead of guessing from exception text.

Importing this module does not import torch (families do, in their own modules).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from jobs.errors import GenfarmError, PipelineError
from jobs.registry import ModelEntry
from storage.base import Storage

__all__ = ["Artifact", "Family", "JobContext", "JobFailed", "PermanentError", "Retry", "constant"]


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


class JobFailed(GenfarmError):
    """A job's own failure, raised by a family or returned in place of its artifacts."""

    retryable = False


class Retry(JobFailed):
    """Try the job again later (a flaky source, a busy service); counts as an attempt."""

    retryable = True

    def __init__(self, message: str, *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(JobFailed):
    """The job can never succeed as given (bad input found on the device); no retry."""


@dataclass
class JobContext:
    """What a family may know and do about one job of its batch."""

    job_id: str
    batch_id: str
    project: str
    attempt: int
    kind: str
    params: dict[str, Any]
    storage: Storage = field(repr=False)
    _still_held: Callable[[], bool] = field(repr=False, default=lambda: True)
    _progress: Callable[[float], bool] = field(repr=False, default=lambda done: True)
    # waits while the unit's pulse is not recent; False once the unit may write no more
    _may_write: Callable[[], bool] = field(repr=False, default=lambda: True)

    # -- sources ------------------------------------------------------------------------------
    def read_source(self, ref: dict[str, Any]) -> bytes:
        """The bytes of a resolved storage reference (``source``, ``mask``, ``audio``...): its
        key was checked at submission to lie inside this job's project, and its sha256 pinned."""
        from storage.keys import join

        key = ref.get("key")
        if not isinstance(key, str):
            raise PermanentError("this source is not a stored object (no key)")
        if not key.startswith(join(self.storage.prefix, self.project) + "/"):
            # submission resolves every key inside the project; anything else is refused here too
            raise PermanentError("this source is not inside the job's project")
        return self.storage.get(key, sha256=ref.get("sha256"))

    # -- partial work (long jobs resume from their stored chunks) ---------------------------
    def chunk_key(self, name: str) -> str:
        """Chunks lie beside the job's outputs, as ``chunk-NAME`` (NAME: letters, digits, . _ -)."""
        return self.storage.job_key(self.project, self.batch_id, self.job_id, f"chunk-{name}")

    def store_chunk(self, name: str, data: bytes, content_type: str = "application/octet-stream",
                    ) -> str:
        self._check_write()
        return self.storage.put(self.chunk_key(name), data, content_type).key

    def chunks(self) -> list[str]:
        """Names of the chunks stored by earlier attempts (or this one), sorted."""
        prefix = self.chunk_key("")
        return [k[len(prefix):] for k in self.storage.list(prefix)]

    def read_chunk(self, name: str) -> bytes:
        return self.storage.get(self.chunk_key(name))

    def delete_chunks(self) -> None:
        for name in self.chunks():
            self._check_write()
            self.storage.delete(self.chunk_key(name))

    def _check_write(self) -> None:
        """A write of this job's waits while its unit's pulse is not recent, and is refused once
        the unit was given up for lost: its rerun writes those keys (workers/outputs.py)."""
        if not self._may_write():
            raise Retry(f"job {self.job_id}: its unit was given up for lost; the rerun stores it")

    # -- reporting ----------------------------------------------------------------------------
    def progress(self, done: float) -> bool:
        """Report progress in [0, 1]; False when the job is no longer held (stop working)."""
        return self._progress(max(0.0, min(1.0, done)))

    def still_held(self) -> bool:
        """Whether this attempt still owns the job (not cancelled, lease not lost)."""
        return self._still_held()


Result = list[Artifact] | JobFailed  # one per job: its artifacts, or its own failure


class Family:
    """Runs the jobs of one named model. Subclasses write ``_setup`` and ``_run``.

    ``run`` gets a batch of jobs that share a batch key (one kind, one op, one output shape)
    and returns one result per job, in order: a list of artifacts, or a ``JobFailed`` for that
    job alone. Raising fails the whole pass; the runner then splits it to isolate the job.
    """

    def __init__(self, model: ModelEntry, settings: Any) -> None:
        self.model = model
        self.settings = settings
        self.device = "cpu"
        self.dtype: Any = None
        self.ready = False

    def setup(self, device: str, dtype: Any) -> None:
        if not self.ready:
            self.device, self.dtype = device, dtype
            self._setup(device, dtype)
            self.ready = True

    def run(self, batch: Sequence[JobContext]) -> list[Result]:
        if not self.ready:
            raise PipelineError(f"{type(self).__name__}.run before setup(); call setup() first")
        results = self._run(list(batch))
        if len(results) != len(batch):
            raise PipelineError(
                f"{type(self).__name__} returned {len(results)} results for {len(batch)} jobs: "
                "a family must return exactly one result per job, in order")
        return results

    def provenance(self) -> dict[str, Any]:
        """What every output records about the model that made it (name, weights digest...)."""
        return {"model": self.model.name, "family": self.model.family}

    def _setup(self, device: str, dtype: Any) -> None:
        pass

    def _run(self, batch: list[JobContext]) -> list[Result]:
        raise NotImplementedError
