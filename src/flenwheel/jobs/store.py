"""Operations on the `job` table shared by every backend: submit, claim, heartbeat, progress, finish, recover.

Every state change is one guarded UPDATE, so two workers can never both own a row: a claim only takes a
`queued` row, and finishing only applies while the row is still `running` under the same worker name.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, case, func, or_, select, update
from sqlalchemy.orm import Session

from flenwheel.domain import Frozen
from flenwheel.errors import FlenwheelError, InvalidInput
from flenwheel.jobs.base import JobRequest, JobStatus
from flenwheel.store.database import Database
from flenwheel.store.models import Job

# A queued row whose `run_after` lies in the future is a retry waiting out its backoff: not claimable yet.
RETRYABLE = (JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.INTERRUPTED)
UNFINISHED = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
MAX_BACKOFF_S = 300.0


class JobNotFound(FlenwheelError):
    def __init__(self, job_id: int) -> None:
        super().__init__(f"No job {job_id}: list jobs with `flenwheel jobs ls`.")


class JobInfo(Frozen):
    """A snapshot of one job row."""

    id: int
    kind: str
    queue: str
    priority: int
    status: JobStatus
    payload: dict[str, Any]
    result: dict[str, Any]
    character_id: int | None
    owner_id: int | None
    parent_id: int | None
    progress_done: int
    progress_total: int
    message: str
    error: str | None
    attempts: int
    max_attempts: int
    cancel_requested: bool
    worker: str | None
    heartbeat_at: datetime | None
    run_after: datetime | None
    external_ids: dict[str, Any]
    cost_usd: float
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, row: Job) -> JobInfo:
        return cls(**{name: getattr(row, name) for name in cls.model_fields})


def utcnow() -> datetime:
    return datetime.now(UTC)


def worker_name(suffix: str = "") -> str:
    """host:pid[:suffix] — recovery uses host and pid to see at once that a local worker has died."""
    base = f"{socket.gethostname()}:{os.getpid()}"
    return f"{base}:{suffix}" if suffix else base


def is_transient(exc: BaseException) -> bool:
    """Errors worth another attempt: engines that say so (`transient=True`), timeouts, dropped connections."""
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    return bool(getattr(exc, "transient", False))


def backoff_seconds(attempts: int, base: float) -> float:
    """Seconds to wait before attempt `attempts + 1`: base, 4×base, 16×base … capped at five minutes."""
    return min(MAX_BACKOFF_S, base * 4 ** max(0, attempts - 1))


def _local_worker_dead(worker: str | None) -> bool:
    """True when `worker` names a process on this host that no longer exists."""
    if not worker:
        return False
    parts = worker.split(":")
    if len(parts) < 2 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class JobStore:
    """The job table of one project database. Thread-safe: each call uses its own session."""

    def __init__(self, db: Database, retry_backoff_s: float = 2.0) -> None:
        self.db = db
        self.retry_backoff_s = retry_backoff_s
        self._postgres = db.engine.dialect.name == "postgresql"
        # Within one process, finishing a job wakes `wait()` callers at once instead of at their next poll.
        self.changed = threading.Condition()

    # -- submitting and reading -------------------------------------------------------------------------

    def submit(self, request: JobRequest) -> int:
        with self.db.session() as session:
            job = Job(
                kind=request.kind,
                queue=request.queue.value,
                priority=request.priority,
                status=JobStatus.QUEUED.value,
                payload=dict(request.payload),
                character_id=request.character_id,
                owner_id=request.owner_id,
                parent_id=request.parent_id,
                max_attempts=request.max_attempts,
            )
            session.add(job)
            session.flush()
            return job.id

    def get(self, job_id: int) -> JobInfo:
        with self.db.session() as session:
            row = session.get(Job, job_id)
            if row is None:
                raise JobNotFound(job_id)
            return JobInfo.of(row)

    def list_jobs(
        self,
        character_id: int | None = None,
        status: JobStatus | str | None = None,
        kind: str | None = None,
        owner_id: int | None = None,
        parent_id: int | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[JobInfo]:
        """Newest first, filtered; page with `limit`/`offset`."""
        query = select(Job).order_by(Job.id.desc()).limit(max(1, min(limit, 1000))).offset(max(0, offset))
        if character_id is not None:
            query = query.where(Job.character_id == character_id)
        if status is not None:
            query = query.where(Job.status == JobStatus(status).value)
        if kind is not None:
            query = query.where(Job.kind == kind)
        if owner_id is not None:
            query = query.where(Job.owner_id == owner_id)
        if parent_id is not None:
            query = query.where(Job.parent_id == parent_id)
        with self.db.session() as session:
            return [JobInfo.of(row) for row in session.scalars(query)]

    def count(self, status: JobStatus | str | None = None) -> int:
        query = select(func.count()).select_from(Job)
        if status is not None:
            query = query.where(Job.status == JobStatus(status).value)
        with self.db.session() as session:
            return int(session.scalar(query) or 0)

    # -- the worker side --------------------------------------------------------------------------------

    def claim(
        self, worker: str, queues: list[str] | None = None, job_id: int | None = None
    ) -> JobInfo | None:
        """Take the best queued row (highest priority, then oldest) — or the row `job_id` — for `worker`."""
        now = utcnow()
        pick = (
            select(Job.id)
            .where(Job.status == JobStatus.QUEUED.value)
            .where(or_(Job.run_after.is_(None), Job.run_after <= now))
            .order_by(Job.priority.desc(), Job.id)
            .limit(1)
        )
        if queues:
            pick = pick.where(Job.queue.in_([str(q) for q in queues]))
        if job_id is not None:
            pick = pick.where(Job.id == job_id)
        if self._postgres:
            pick = pick.with_for_update(skip_locked=True)
        statement = (
            update(Job)
            .where(Job.id == pick.scalar_subquery(), Job.status == JobStatus.QUEUED.value)
            .values(
                status=JobStatus.RUNNING.value,
                worker=worker,
                attempts=Job.attempts + 1,
                started_at=now,
                heartbeat_at=now,
                run_after=None,
                finished_at=None,
                error=None,
            )
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
        with self.db.session() as session:
            claimed = session.execute(statement).scalar()
        return None if claimed is None else self.get(claimed)

    def heartbeat(self, worker: str, job_ids: list[int] | None = None) -> int:
        """Mark the worker's running rows alive; returns how many it still owns."""
        statement = update(Job).where(Job.status == JobStatus.RUNNING.value, Job.worker == worker)
        if job_ids is not None:
            statement = statement.where(Job.id.in_(job_ids))
        with self.db.session() as session:
            return _rowcount(session.execute(statement.values(heartbeat_at=utcnow())))

    def progress(
        self, job_id: int, done: int, total: int, message: str = "", worker: str | None = None
    ) -> None:
        """Record progress of a running job (of `worker`'s attempt, when given)."""
        values: dict[str, Any] = {"progress_done": max(0, done), "progress_total": max(0, total, done)}
        if message:
            values["message"] = message
        statement = update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING.value)
        if worker is not None:
            statement = statement.where(Job.worker == worker)
        with self.db.session() as session:
            session.execute(statement.values(**values))

    def cancel_requested(self, job_id: int, worker: str | None = None) -> bool:
        """True when the user asked the job to stop — or, given `worker`, when that worker no longer owns the
        row (it was recovered and handed to another), so the stale attempt stops instead of working twice."""
        with self.db.session() as session:
            row = session.execute(
                select(Job.cancel_requested, Job.status, Job.worker).where(Job.id == job_id)
            ).first()
        if row is None:
            return True
        if worker is not None and (row.status != JobStatus.RUNNING.value or row.worker != worker):
            return True
        return bool(row.cancel_requested)

    def remember_external_id(self, job_id: int, key: str, value: str) -> None:
        with self.db.session() as session:
            row = session.get(Job, job_id, with_for_update=self._postgres)
            if row is None:
                raise JobNotFound(job_id)
            row.external_ids = {**(row.external_ids or {}), key: value}

    def complete(
        self, job_id: int, worker: str, result: dict[str, Any] | None = None, cost_usd: float = 0.0
    ) -> bool:
        """Record success; False when the worker no longer owns the row (it was recovered elsewhere)."""
        return self._finish(
            job_id,
            worker,
            status=JobStatus.SUCCEEDED,
            result=dict(result or {}),
            cost_usd=float(cost_usd),
            message="done",
            progress_done=case(
                (Job.progress_total > Job.progress_done, Job.progress_total), else_=Job.progress_done
            ),
        )

    def fail(self, job_id: int, worker: str, error: str, transient: bool = False) -> JobStatus | None:
        """Record a failure of `worker`'s attempt: a transient one with attempts left (and no cancel asked for)
        goes back to the queue after a backoff, anything else fails the job. None when the worker no longer owns
        the row. Each branch is one guarded UPDATE, so a row that changed hands meanwhile is left alone."""
        now = utcnow()
        requeue = (
            update(Job)
            .where(*_owned(job_id, worker), Job.attempts < Job.max_attempts, Job.cancel_requested.is_(False))
            .values(
                status=JobStatus.QUEUED.value,
                worker=None,
                heartbeat_at=None,
                run_after=self._retry_at(now),
                message=f"retrying after: {error}"[:2000],
                error=error,
            )
        )
        give_up = (
            update(Job)
            .where(*_owned(job_id, worker))
            .values(status=JobStatus.FAILED.value, error=error, finished_at=now)
        )
        with self.db.session() as session:
            if transient and _applied(session.execute(requeue)):
                status: JobStatus | None = JobStatus.QUEUED
            elif _applied(session.execute(give_up)):
                status = JobStatus.FAILED
            else:
                status = None
        self._notify()
        return status

    def _retry_at(self, now: datetime) -> Any:
        """`now + backoff_seconds(attempts)` as SQL over the row's own attempt count: one CASE branch per
        attempt until the backoff reaches its cap (a handful of them), the cap after that."""
        if self.retry_backoff_s <= 0:
            return now
        branches = []
        attempts = 1
        while (delay := backoff_seconds(attempts, self.retry_backoff_s)) < MAX_BACKOFF_S and attempts < 64:
            branches.append((Job.attempts <= attempts, now + timedelta(seconds=delay)))
            attempts += 1
        capped = now + timedelta(seconds=backoff_seconds(attempts, self.retry_backoff_s))
        return case(*branches, else_=capped) if branches else capped

    def cancelled_by_stage(self, job_id: int, worker: str) -> bool:
        """The stage saw the cancel request and stopped."""
        return self._finish(job_id, worker, status=JobStatus.CANCELLED, message="cancelled")

    def _finish(self, job_id: int, worker: str, status: JobStatus, **values: Any) -> bool:
        with self.db.session() as session:
            done = session.execute(
                update(Job)
                .where(*_owned(job_id, worker))
                .values(status=status.value, finished_at=utcnow(), **values)
            )
        self._notify()
        return _applied(done)

    def release(self, job_id: int, worker: str) -> bool:
        """Hand a running row back to the queue without counting the attempt (a worker shutting down)."""
        with self.db.session() as session:
            done = session.execute(
                update(Job)
                .where(*_owned(job_id, worker))
                .values(
                    status=JobStatus.QUEUED.value,
                    worker=None,
                    heartbeat_at=None,
                    attempts=Job.attempts - 1,
                    message="handed back by a worker shutting down",
                )
            )
        return _applied(done)

    # -- the user side ----------------------------------------------------------------------------------

    def cancel(self, job_id: int) -> JobStatus:
        """A queued job is cancelled at once; a running one is asked to stop at its next check; a finished one
        is left as it is. Returns the job's status afterwards."""
        queued = Job.status == JobStatus.QUEUED.value
        statement = (
            update(Job)
            .where(Job.id == job_id, Job.status.in_(UNFINISHED))
            .values(
                status=case((queued, JobStatus.CANCELLED.value), else_=Job.status),
                finished_at=case((queued, utcnow()), else_=Job.finished_at),
                message=case((queued, "cancelled before it started"), else_="cancel requested"),
                cancel_requested=True,
            )
            .returning(Job.status)
            .execution_options(synchronize_session=False)
        )
        with self.db.session() as session:
            status = session.execute(statement).scalar() or self._status(session, job_id)
        self._notify()
        return JobStatus(status)

    def retry(self, job_id: int) -> JobInfo:
        """Queue a failed, cancelled or interrupted job again with fresh attempts; its external ids stay."""
        statement = (
            update(Job)
            .where(Job.id == job_id, Job.status.in_([status.value for status in RETRYABLE]))
            .values(
                status=JobStatus.QUEUED.value,
                max_attempts=case(
                    (Job.max_attempts > Job.attempts, Job.max_attempts), else_=Job.attempts + 1
                ),
                cancel_requested=False,
                error=None,
                worker=None,
                heartbeat_at=None,
                run_after=None,
                finished_at=None,
                message="queued again",
            )
        )
        with self.db.session() as session:
            while not _applied(session.execute(statement)):
                status = self._status(session, job_id)
                if JobStatus(status) not in RETRYABLE:  # else it became retryable just now: try again
                    raise InvalidInput(
                        f"job {job_id} is {status}: only failed, cancelled or interrupted jobs can be retried"
                    )
        return self.get(job_id)

    def recover(
        self, timeout_s: float, alive: Callable[[str | None], bool] | None = None
    ) -> tuple[list[int], list[int]]:
        """Running rows whose worker is gone (stale heartbeat, or a dead local pid) go back to the queue, or
        become `interrupted` when no attempts are left (`cancelled` when a cancel was asked for). Returns
        (requeued ids, interrupted or cancelled ids)."""
        stale_before = utcnow() - timedelta(seconds=timeout_s)
        with self.db.session() as session:
            candidates = session.execute(
                select(Job.id, Job.worker, Job.heartbeat_at, Job.attempts).where(
                    Job.status == JobStatus.RUNNING.value
                )
            ).all()
        requeued: list[int] = []
        interrupted: list[int] = []
        for job_id, worker, beat, attempts in candidates:
            stale = beat is None or _aware(beat) < stale_before
            dead = _local_worker_dead(worker) or (alive is not None and not alive(worker))
            if not (stale or dead):
                continue
            # Judged by its heartbeat alone, the worker may have beaten since: the UPDATE asks again.
            status = self._recover_one(job_id, worker, attempts, None if dead else stale_before)
            if status == JobStatus.QUEUED:
                requeued.append(job_id)
            elif status is not None:
                interrupted.append(job_id)
        if requeued or interrupted:
            self._notify()
        return requeued, interrupted

    def _recover_one(
        self, job_id: int, worker: str | None, attempts: int, stale_before: datetime | None
    ) -> JobStatus | None:
        """End `worker`'s attempt `attempts` of the job in one guarded UPDATE; None when the row is no longer
        that attempt (finished, recovered by another caller, claimed again) or, given `stale_before`, beat since."""
        guard = [Job.id == job_id, Job.status == JobStatus.RUNNING.value, Job.attempts == attempts]
        guard.append(Job.worker.is_(None) if worker is None else Job.worker == worker)
        if stale_before is not None:
            guard.append(or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale_before))
        now = utcnow()
        lost = f"worker {worker} stopped while running attempt {attempts}"
        cancelled = Job.cancel_requested.is_(True)
        again = Job.attempts < Job.max_attempts

        def branch(if_cancelled: Any, if_again: Any, if_out_of_attempts: Any) -> Any:
            return case((cancelled, if_cancelled), (again, if_again), else_=if_out_of_attempts)

        statement = (
            update(Job)
            .where(*guard)
            .values(
                status=branch(JobStatus.CANCELLED.value, JobStatus.QUEUED.value, JobStatus.INTERRUPTED.value),
                worker=branch(Job.worker, None, Job.worker),
                heartbeat_at=branch(Job.heartbeat_at, None, Job.heartbeat_at),
                finished_at=branch(now, None, now),
                message=branch(lost, f"{lost}; queued again", "interrupted"),
                error=branch(
                    Job.error,
                    Job.error,
                    f"{lost}, and it has no attempts left: `flenwheel jobs retry {job_id}`",
                ),
            )
            .returning(Job.status)
            .execution_options(synchronize_session=False)
        )
        with self.db.session() as session:
            status = session.execute(statement).scalar()
        return None if status is None else JobStatus(status)

    @staticmethod
    def _status(session: Session, job_id: int) -> str:
        status = session.scalar(select(Job.status).where(Job.id == job_id))
        if status is None:
            raise JobNotFound(job_id)
        return status

    # -- waiting ----------------------------------------------------------------------------------------

    def wait(self, job_id: int, timeout: float = 60.0, poll_s: float = 0.05) -> JobInfo:
        """Block until the job has finished (or `timeout` passes) and return it."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.get(job_id)
            left = deadline - time.monotonic()
            if info.status.finished or left <= 0:
                return info
            with self.changed:
                self.changed.wait(min(poll_s, left))

    def _notify(self) -> None:
        with self.changed:
            self.changed.notify_all()


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def _applied(result: Any) -> bool:
    """Whether a guarded UPDATE of one row found it as it expected (and so changed it)."""
    return _rowcount(result) == 1


def _owned(job_id: int, worker: str) -> tuple[ColumnElement[bool], ...]:
    """The guard of every worker-side transition: the row is running, and it is this worker's attempt."""
    return (Job.id == job_id, Job.status == JobStatus.RUNNING.value, Job.worker == worker)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
