"""Background jobs. The `job` table is the source of truth on every backend; a backend only decides how a
queued row reaches a worker.

    from flenwheel.jobs import JobRequest, Queue, open_backend
    backend = open_backend(project)            # embedded pool, or Procrastinate (FLENWHEEL_JOBS=procrastinate)
    job_id = backend.submit(JobRequest(kind="generate", queue=Queue.GPU, character_id=7,
                                       payload={"character": "lisa", "request": {"prompt": "…"}}))
    info = backend.wait(job_id, timeout=60)    # JobInfo: status, progress_done/total, result, error …
    backend.cancel(job_id); backend.retry(job_id)
    backend.store.list_jobs(character_id=7, status="running")   # JobStore: the table operations

A kind is a plain function `fn(project, payload: dict, ctx: JobContext) -> dict` with a typed payload: the
job layer's own test kinds in `jobs/builtin_kinds.py`, the pipeline's in `pipeline/kinds.py` (registered by
the entry points with `register_pipeline_kinds()`), others added with `kinds.register`. Stages report with
`ctx.progress(done, total, message)`, stop when `ctx.cancelled()` by raising `JobCancelled`, keep remote ids
with `ctx.remember_external_id(key, value)` (a retry sees them via `known_external_id`), and raise an
error with `transient = True` (e.g. `TransientJobError`) to be retried with backoff. A `cost_usd` key in
the result is recorded on the row. `flenwheel worker --queue gpu|cpu|api` runs workers on any host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flenwheel.jobs.base import (
    JobBackend,
    JobCancelled,
    JobContext,
    JobRequest,
    JobStatus,
    Queue,
    TransientJobError,
)

if TYPE_CHECKING:
    from flenwheel.store.project import Project

__all__ = [
    "JobBackend",
    "JobCancelled",
    "JobContext",
    "JobRequest",
    "JobStatus",
    "Queue",
    "TransientJobError",
    "open_backend",
]


def open_backend(project: Project, start_workers: bool = False, workers: int = 2) -> JobBackend:
    """The backend the settings choose. Embedded: `start_workers=True` also runs a pool in this process
    (`flenwheel serve`, the demo); otherwise jobs wait for a `flenwheel worker`."""
    from flenwheel.jobs.worker import uses_procrastinate

    if uses_procrastinate(project):
        from flenwheel.jobs.procrastinate_backend import ProcrastinateBackend

        return ProcrastinateBackend(project)
    from flenwheel.jobs.embedded import EmbeddedBackend

    backend = EmbeddedBackend(project, workers=workers)
    return backend.start() if start_workers else backend
