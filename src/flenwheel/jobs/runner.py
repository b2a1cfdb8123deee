"""Run one claimed job: look up its kind, call it with the job's run context, record the outcome on its row.
Both backends end here, so a stage behaves the same in the embedded pool and in a Procrastinate worker."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from flenwheel.errors import FlenwheelError
from flenwheel.jobs import kinds
from flenwheel.jobs.base import JobCancelled, JobStatus
from flenwheel.jobs.store import JobInfo, JobStore, is_transient
from flenwheel.store.project import Project
from flenwheel.store.run import RunContext

log = logging.getLogger(__name__)


def describe_error(exc: BaseException) -> str:
    """Our own errors already read as sentences; anything else gets its type so it can be searched for."""
    if isinstance(exc, FlenwheelError):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


def job_context(
    project: Project, job: JobInfo, worker: str, submit: Callable[[Any], int] | None = None
) -> RunContext:
    """The run context of a claimed job: progress and cancel through its row, its character's budget, the
    values it remembered on earlier attempts, and child jobs through `submit` (the backend running it)."""
    return RunContext(
        project.db,
        job_id=job.id,
        worker=worker,
        character_id=job.character_id,
        submit=submit if submit is not None else store_submit(project),
        values=dict(job.external_ids),
    )


def store_submit(project: Project) -> Callable[[Any], int]:
    """Submit child jobs straight into the job table (workers of any backend poll or are notified)."""
    from flenwheel.jobs.store import JobStore

    return JobStore(project.db).submit


def run_claimed(
    project: Project,
    store: JobStore,
    job: JobInfo,
    worker: str,
    submit: Callable[[Any], int] | None = None,
) -> JobStatus | None:
    """Execute `job` (already claimed by `worker`); returns the status it ended in, None if it was taken away.
    `submit`: how the job's child jobs are submitted (the backend running it)."""
    ctx = job_context(project, job, worker, submit if submit is not None else store.submit)
    try:
        function = kinds.get(job.kind)
        result = function(project, dict(job.payload), ctx)
        json.dumps(result)  # a result that cannot be stored is the stage's bug: fail now, not at commit
    except JobCancelled:
        ctx.flush()
        return JobStatus.CANCELLED if store.cancelled_by_stage(job.id, worker) else None
    except Exception as exc:
        ctx.flush()
        if ctx.cancelled():  # an engine that stopped because we asked it to
            return JobStatus.CANCELLED if store.cancelled_by_stage(job.id, worker) else None
        log.info(
            "job %s (%s) failed: %s", job.id, job.kind, exc, exc_info=not isinstance(exc, FlenwheelError)
        )
        return store.fail(job.id, worker, describe_error(exc), transient=is_transient(exc))
    ctx.flush()
    cost = float(result.get("cost_usd", 0.0) or 0.0) + ctx.cost_usd
    return JobStatus.SUCCEEDED if store.complete(job.id, worker, result, cost) else None
