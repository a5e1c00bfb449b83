"""The error tree of genfarm.

    GenfarmError
    ├── ManifestError (ValueError)      a manifest has bad lines; nothing was written
    ├── NotFound (LookupError)          a batch, job or project that does not exist
    │   └── AmbiguousId                 an id prefix that matches more than one row
    ├── StateConflict                   a transition whose expected state no longer holds
    ├── StorageError                    object storage failed (see storage.errors)
    └── PipelineError                   a model pipeline broke its contract (see workers)
"""

from __future__ import annotations

from dataclasses import dataclass


class GenfarmError(Exception):
    """Root of every error genfarm raises on purpose."""


@dataclass(frozen=True)
class LineError:
    """One problem on one manifest line: where, which field, what was expected."""

    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class ManifestError(GenfarmError, ValueError):
    """A manifest failed validation; it carries every bad line, and nothing was written."""

    def __init__(self, errors: list[LineError], source: str = "manifest") -> None:
        self.errors = errors
        self.source = source
        lines = sorted({e.line for e in errors})
        super().__init__(f"{source}: {len(errors)} error(s) on {len(lines)} line(s)")

    def report(self, limit: int = 200) -> str:
        shown = [f"{self.source}:{e.line}: {e.field + ': ' if e.field else ''}{e.message}"
                 for e in self.errors[:limit]]
        if len(self.errors) > limit:
            shown.append(f"... and {len(self.errors) - limit} more")
        return "\n".join(shown)


class NotFound(GenfarmError, LookupError):
    """A batch, job or project that does not exist (or is not visible to the caller)."""


class AmbiguousId(NotFound):
    """An id prefix that matches more than one row."""


class BudgetExceeded(GenfarmError):
    """A submission whose estimate is more than its project's budget has left."""

    def __init__(self, project: str, limit: float, committed: float, needed: float) -> None:
        self.project, self.limit, self.committed, self.needed = project, limit, committed, needed
        self.left = max(0.0, limit - committed)
        super().__init__(
            f"budget: project {project} has {self.left:.1f} of its {limit:.1f} device-seconds "
            f"left ({committed:.1f} spent or committed to queued jobs); this submission needs "
            f"an estimated {needed:.1f}; nothing was submitted (raise it with `genfarm budget "
            f"set {project} SECONDS`)")


class StateConflict(GenfarmError):
    """A transition whose expected state no longer holds (someone else moved the job)."""


class StorageError(GenfarmError):
    """Object storage failed."""


class PipelineError(GenfarmError):
    """A model pipeline broke its contract (wrong number of outputs, bad shapes)."""
