"""The job contract. The `job` table (store/models.py Job) is the source of truth for status and progress on
every backend; a backend only decides how a queued row reaches a worker.

Pipeline stages are plain functions that take a `JobContext`; the same function runs from the CLI (with a
`LocalJobContext`), in the embedded worker pool, or in a Procrastinate worker on another host.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import Field

from flenwheel.domain import Frozen
from flenwheel.errors import FlenwheelError
from flenwheel.store.run import RunCancelled, RunContext, adapt_progress

if TYPE_CHECKING:
    from flenwheel.jobs.store import JobInfo, JobStore


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # was running when its worker died and has no attempts left

    @property
    def finished(self) -> bool:
        return self in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.INTERRUPTED}


class Queue(StrEnum):
    GPU = "gpu"  # local diffusion and training
    CPU = "cpu"  # curation, face analysis, dataset building, reports
    API = "api"  # waiting on remote engines (ComfyUI, fal, Replicate)


class JobRequest(Frozen):
    """What to run: a registered job kind and its JSON payload."""

    kind: str = Field(min_length=1, max_length=48)
    payload: dict[str, Any] = Field(default_factory=dict)
    queue: Queue = Queue.CPU
    priority: int = 0
    character_id: int | None = None
    owner_id: int | None = None
    parent_id: int | None = None
    max_attempts: int = Field(default=3, ge=1, le=20)


# A running stage reports through the one run context (store/run.py): progress, cancellation (check
# `cancelled()` between steps), budget calls, remote ids, values kept across attempts, child jobs.
JobContext = RunContext
JobCancelled = RunCancelled  # raised by a stage that saw `cancelled()`; the job ends as cancelled, not failed


class LocalJobContext(RunContext):
    """A run with no job row (direct calls of a stage in tests and scripts): progress to a callback taking
    (done, total, message); bound to the project's database by the first stage that stores something."""

    def __init__(self, on_progress: object = None) -> None:
        super().__init__(on_progress=adapt_progress(on_progress if callable(on_progress) else None))


class TransientJobError(FlenwheelError):
    """A failure worth another attempt (a dropped connection, a busy engine); the job is retried with backoff."""

    transient = True


class JobBackend(Protocol):
    """How callers (CLI, web, pipeline chains) hand work to workers; `store` reads and lists the job table."""

    store: JobStore

    def submit(self, request: JobRequest) -> int: ...

    def get(self, job_id: int) -> JobInfo: ...

    def wait(self, job_id: int, timeout: float = 60.0) -> JobInfo: ...

    def cancel(self, job_id: int) -> JobStatus: ...

    def retry(self, job_id: int) -> JobInfo: ...
