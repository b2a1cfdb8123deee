"""Run one claimed job: look up its kind, call it with a DbJobContext, record the outcome on its row.
Both backends end here, so a stage behaves the same in the embedded pool and in a Procrastinate worker."""

from __future__ import annotations

import json
import logging

from flenwheel.errors import FlenwheelError
from flenwheel.jobs import kinds
from flenwheel.jobs.base import JobCancelled, JobStatus
from flenwheel.jobs.store import DbJobContext, JobInfo, JobStore, is_transient
from flenwheel.store.project import Project

log = logging.getLogger(__name__)


def describe_error(exc: BaseException) -> str:
    """Our own errors already read as sentences; anything else gets its type so it can be searched for."""
    if isinstance(exc, FlenwheelError):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


def run_claimed(project: Project, store: JobStore, job: JobInfo, worker: str) -> JobStatus | None:
    """Execute `job` (already claimed by `worker`); returns the status it ended in, None if it was taken away."""
    ctx = DbJobContext(store, job)
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
