"""The scale-out backend: Procrastinate on the project's PostgreSQL database.

Submitting inserts the job row, then defers the Procrastinate task `flenwheel.run_job` carrying only the
job id, on the queue named by the row (queueing lock `job-<id>`, so a row is never waiting twice). A worker
running that task claims the row by id with the same atomic claim as the embedded pool and runs the stage;
the row stays the source of truth. Each worker also heartbeats its rows, requeues rows whose worker died
(`JobStore.recover`), re-delivers queued rows that have no waiting task, and closes Procrastinate's stalled
jobs, so a SIGKILLed host loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from flenwheel.jobs.base import JobRequest, JobStatus, Queue
from flenwheel.jobs.runner import run_claimed
from flenwheel.jobs.store import JobInfo, JobStore, worker_name
from flenwheel.store.models import Job
from flenwheel.store.project import Project

log = logging.getLogger(__name__)
TASK_NAME = "flenwheel.run_job"
_SCHEMA_LOCK = 0x666C656E  # pg advisory lock key: one process applies Procrastinate's schema at a time


def conninfo(database_url: str) -> str:
    """A psycopg connection string from the SQLAlchemy URL (postgresql+psycopg://… → postgresql://…)."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


def ensure_schema(project: Project) -> bool:
    """Apply Procrastinate's schema to the project database unless it is there; True when applied now."""
    with project.db.engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _SCHEMA_LOCK})
        try:
            present = connection.execute(
                text("SELECT to_regclass('procrastinate_jobs') IS NOT NULL")
            ).scalar()
            if not present:
                app = make_app(project)
                with app.open():
                    app.schema_manager.apply_schema()
            return not present
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _SCHEMA_LOCK})
            connection.commit()


def make_app(project: Project) -> Any:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo(project.db.url)))
    return app


def _deferrer(app: Any, job: JobInfo | Job, delay_s: float = 0.0) -> Any:
    options: dict[str, Any] = {
        "queue": job.queue,
        "priority": job.priority,
        "queueing_lock": f"job-{job.id}",
    }
    if delay_s > 0:
        options["schedule_in"] = {"seconds": delay_s}
    return app.configure_task(TASK_NAME, **options)


def _delay_of(job: JobInfo | Job) -> float:
    """Seconds until a queued row's `run_after` (a requeued transient failure's backoff); 0 when due."""
    if job.status != JobStatus.QUEUED.value or job.run_after is None:
        return 0.0
    moment = job.run_after if job.run_after.tzinfo else job.run_after.replace(tzinfo=UTC)
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


class ProcrastinateBackend:
    """Submit, cancel and retry jobs for Procrastinate workers (from the CLI, the web app, tests)."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self.store = JobStore(project.db, retry_backoff_s=project.settings.job_retry_backoff_s)
        self._app: Any = None
        self._lock = threading.Lock()

    def _opened(self) -> Any:
        with self._lock:
            if self._app is None:
                ensure_schema(self.project)
                self._app = make_app(self.project).open()
            return self._app

    def submit(self, request: JobRequest) -> int:
        job_id = self.store.submit(request)
        self.dispatch(self.store.get(job_id))
        return job_id

    def dispatch(self, job: JobInfo) -> bool:
        """Defer the task for a queued row; False when one is already waiting for it."""
        from procrastinate.exceptions import AlreadyEnqueued

        try:
            _deferrer(self._opened(), job, _delay_of(job)).defer(job_id=job.id)
        except AlreadyEnqueued:
            return False
        return True

    def get(self, job_id: int) -> JobInfo:
        return self.store.get(job_id)

    def wait(self, job_id: int, timeout: float = 60.0) -> JobInfo:
        return self.store.wait(job_id, timeout)

    def cancel(self, job_id: int) -> JobStatus:
        return self.store.cancel(job_id)  # a delivered task finds the row cancelled and does nothing

    def retry(self, job_id: int) -> JobInfo:
        job = self.store.retry(job_id)
        self.dispatch(job)
        return job

    def recover(self) -> tuple[list[int], list[int]]:
        requeued, interrupted = self.store.recover(self.project.settings.job_stale_after_s)
        for job_id in requeued:
            self.dispatch(self.store.get(job_id))
        return requeued, interrupted

    def close(self) -> None:
        with self._lock:
            if self._app is not None:
                self._app.close()
                self._app = None

    def __enter__(self) -> ProcrastinateBackend:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class _WorkerState:
    """What one worker process shares between its task threads and its maintenance loop."""

    def __init__(self, project: Project, queues: list[str]) -> None:
        self.project = project
        self.queues = queues
        self.store = JobStore(project.db, retry_backoff_s=project.settings.job_retry_backoff_s)
        self.running: dict[int, str] = {}
        self.lock = threading.Lock()
        self._backend: ProcrastinateBackend | None = None

    def submit(self, request: JobRequest) -> int:
        """Child jobs of the jobs this worker runs: one backend per worker process, opened on first use."""
        with self.lock:
            if self._backend is None:
                self._backend = ProcrastinateBackend(self.project)
            backend = self._backend
        return backend.submit(request)

    def run(self, job_id: int) -> JobInfo | None:
        """Claim the row by id and run it; None when it is not ours to run (cancelled, taken, not due)."""
        worker = worker_name(f"pq-{threading.get_ident() & 0xFFFFFF:x}")
        job = self.store.claim(worker, job_id=job_id)
        if job is None:
            return None
        with self.lock:
            self.running[job_id] = worker
        try:
            run_claimed(self.project, self.store, job, worker, submit=self.submit)
        finally:
            with self.lock:
                self.running.pop(job_id, None)
        return self.store.get(job_id)

    def hand_back(self) -> list[JobInfo]:
        """Rows still running at shutdown go back to the queue (their attempts stop when they notice)."""
        with self.lock:
            running = dict(self.running)
        return [
            self.store.get(job_id) for job_id, worker in running.items() if self.store.release(job_id, worker)
        ]

    def heartbeat(self) -> None:
        with self.lock:
            running = dict(self.running)
        for job_id, worker in running.items():
            self.store.heartbeat(worker, [job_id])

    def undelivered(self) -> list[JobInfo]:
        """Queued, due rows of our queues with no Procrastinate task waiting or running for them (the
        client died between inserting the row and deferring its task)."""
        now = datetime.now(UTC)
        waiting = text(
            "NOT EXISTS (SELECT 1 FROM procrastinate_jobs p WHERE p.status IN ('todo', 'doing') "
            "AND p.queueing_lock = 'job-' || job.id::text)"
        )
        with self.project.db.session() as session:
            rows = session.scalars(
                select(Job)
                .where(Job.status == JobStatus.QUEUED.value, Job.queue.in_(self.queues))
                .where((Job.run_after.is_(None)) | (Job.run_after <= now))
                .where(
                    waiting, Job.created_at <= now - timedelta(seconds=2)
                )  # its client may be deferring now
                .order_by(Job.priority.desc(), Job.id)
                .limit(500)
            )
            return [JobInfo.of(row) for row in rows]


def run_procrastinate_worker(
    project: Project,
    queues: Sequence[Queue | str],
    concurrency: int = 1,
    stop: threading.Event | None = None,
    shutdown_timeout_s: float = 30.0,
) -> None:
    """Run a Procrastinate worker on `queues` until SIGTERM/SIGINT or `stop`; running jobs get
    `shutdown_timeout_s` to finish, then go back to the queue for another worker."""
    ensure_schema(project)
    queue_names = [Queue(q).value for q in queues]
    asyncio.run(_serve(project, queue_names, max(1, concurrency), stop, shutdown_timeout_s))


async def _in_daemon_thread(function: Any, *args: Any) -> Any:
    """Like asyncio.to_thread, but the thread does not hold the process open after shutdown hands its job back."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def deliver(setter: Any, value: Any) -> None:
        if not future.done():
            setter(value)

    def target() -> None:
        try:
            outcome = function(*args)
        except BaseException as exc:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
                loop.call_soon_threadsafe(deliver, future.set_exception, exc)
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(deliver, future.set_result, outcome)

    threading.Thread(target=target, name="flenwheel-job", daemon=True).start()
    return await future


async def _serve(
    project: Project,
    queues: list[str],
    concurrency: int,
    stop: threading.Event | None,
    shutdown_timeout_s: float,
) -> None:
    import procrastinate
    from procrastinate.exceptions import AlreadyEnqueued

    state = _WorkerState(project, queues)
    app = make_app(project)
    settings = project.settings
    beat_s = max(0.1, min(5.0, settings.job_stale_after_s / 4))

    @app.task(name=TASK_NAME, pass_context=False)
    async def run_job(job_id: int) -> None:
        finished = await _in_daemon_thread(state.run, job_id)
        if (
            finished is not None and finished.status == JobStatus.QUEUED
        ):  # a transient failure: try again later
            delay = _delay_of(finished)  # the row's run_after, which claims also honour
            with contextlib.suppress(AlreadyEnqueued):
                await _deferrer(app, finished, delay).defer_async(job_id=job_id)

    async def redeliver() -> None:
        requeued, _ = await asyncio.to_thread(state.store.recover, settings.job_stale_after_s)
        if requeued:
            log.warning("requeued jobs %s whose worker stopped", requeued)
        for job_id in requeued:  # the dead worker's task is still `doing`: the queueing lock does not block
            with contextlib.suppress(AlreadyEnqueued):
                job = await asyncio.to_thread(state.store.get, job_id)
                await _deferrer(app, job).defer_async(job_id=job_id)
        for job in await asyncio.to_thread(state.undelivered):
            with contextlib.suppress(AlreadyEnqueued):
                await _deferrer(app, job).defer_async(job_id=job.id)
        for stalled in await app.job_manager.get_stalled_jobs(
            seconds_since_heartbeat=settings.job_stale_after_s
        ):
            # The task's worker died; the row was requeued above and a fresh task deferred for it.
            await app.job_manager.finish_job(stalled, procrastinate.jobs.Status.FAILED, delete_job=False)

    async def maintain() -> None:
        ticks = 0
        while True:
            try:
                await asyncio.to_thread(state.heartbeat)
                if ticks % 4 == 0:
                    await redeliver()
            except Exception:
                log.exception("job maintenance failed; retrying")
            ticks += 1
            await asyncio.sleep(beat_s)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
    if stop is not None:
        threading.Thread(
            target=lambda: (stop.wait(), loop.call_soon_threadsafe(stopping.set)), daemon=True
        ).start()

    async with app.open_async():
        worker = asyncio.create_task(
            app.run_worker_async(
                queues=queues,
                concurrency=concurrency,
                name=worker_name("procrastinate"),
                install_signal_handlers=False,
                shutdown_graceful_timeout=shutdown_timeout_s,
                fetch_job_polling_interval=0.25,  # a fallback: LISTEN/NOTIFY usually delivers at once
                abort_job_polling_interval=5.0,
                update_heartbeat_interval=beat_s,
                stalled_worker_timeout=settings.job_stale_after_s,
            )
        )
        maintenance = asyncio.create_task(maintain())
        await stopping.wait()
        maintenance.cancel()
        worker.cancel()
        for task in (maintenance, worker):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for job in state.hand_back():
            log.warning("job %s was still running at shutdown: handed back to the queue", job.id)
            with contextlib.suppress(AlreadyEnqueued):
                await _deferrer(app, job).defer_async(job_id=job.id)
