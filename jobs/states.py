"""Job and batch states: the values stored in the database (change only through migrations)."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"  # waiting for a worker to claim it (possibly after a retry backoff)
    RUNNING = "running"  # claimed by a worker that holds an unexpired lease
    SUCCEEDED = "succeeded"  # finished; its outputs are recorded and in storage
    FAILED = "failed"  # finished with an error; out of attempts or a permanent error
    CANCELLED = "cancelled"  # withdrawn by the user before it finished
    PAUSED = "paused"  # held by the user (``genfarm pause``): not claimed until resumed
    WAITING = "waiting"  # waits for other lines or batches (``after``) to succeed


# Finished states: nothing moves a job out of them, except a user's explicit retry of a failure.
TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

# The only transitions the state machine allows; terminal states never change.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.PAUSED}),
    JobStatus.PAUSED: frozenset({JobStatus.QUEUED, JobStatus.CANCELLED}),
    # queued once every job it waits for succeeded; failed ("upstream failed") when one did not
    JobStatus.WAITING: frozenset({JobStatus.QUEUED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.QUEUED}
    ),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset({JobStatus.QUEUED}),  # only by an explicit `genfarm retry`
    JobStatus.CANCELLED: frozenset(),
}


class BatchStatus(StrEnum):
    ACTIVE = "active"  # some of its jobs are not finished
    SUCCEEDED = "succeeded"  # every job succeeded; manifest written
    FAILED = "failed"  # every job finished, at least one failed; manifest written
    CANCELLED = "cancelled"  # cancelled by the user; manifest written
