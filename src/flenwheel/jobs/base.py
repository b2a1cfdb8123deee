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


class JobContext(Protocol):
    """What a running stage reports through. Cancellation is cooperative: check `cancelled()` between steps."""

    job_id: int | None

    def progress(self, done: int, total: int, message: str = "") -> None: ...

    def cancelled(self) -> bool: ...

    def remember_external_id(self, key: str, value: str) -> None:
        """Persist a remote id (ComfyUI prompt, fal request, training id) before waiting on it."""

    def known_external_id(self, key: str) -> str | None: ...


class JobCancelled(FlenwheelError):
    """Raised by a stage that saw `cancelled()`; the job ends as cancelled, not failed."""


class LocalJobContext:
    """A context for direct calls (CLI without a worker, tests): progress to a callback, ids in memory."""

    job_id: int | None = None

    def __init__(self, on_progress: object = None) -> None:
        self._on_progress = on_progress
        self._external: dict[str, str] = {}
        self._cancelled = False

    def progress(self, done: int, total: int, message: str = "") -> None:
        if callable(self._on_progress):
            self._on_progress(done, total, message)

    def cancel(self) -> None:
        self._cancelled = True

    def cancelled(self) -> bool:
        return self._cancelled

    def remember_external_id(self, key: str, value: str) -> None:
        self._external[key] = value

    def known_external_id(self, key: str) -> str | None:
        return self._external.get(key)


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
