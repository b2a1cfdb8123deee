"""The embedded backend: worker threads in this process claim rows from the project's job table.

Works on SQLite (the default, WAL) and on PostgreSQL. Several processes may run pools on the same
database; claims are atomic, heartbeats keep running rows alive, and `recover()` on start (and every few
heartbeats) requeues rows whose worker died.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from types import TracebackType

from flenwheel.jobs.base import JobRequest, JobStatus, Queue
from flenwheel.jobs.runner import run_claimed
from flenwheel.jobs.store import JobInfo, JobStore, worker_name
from flenwheel.store.project import Project

log = logging.getLogger(__name__)


class EmbeddedBackend:
    """An in-process worker pool. Use as a context manager, or call `start()` and `shutdown()`."""

    def __init__(
        self,
        project: Project,
        queues: Iterable[Queue | str] | None = None,
        workers: int = 2,
        poll_s: float = 0.05,
        idle_poll_max_s: float = 0.25,
        heartbeat_s: float | None = None,
        stale_after_s: float | None = None,
    ) -> None:
        settings = project.settings
        self.project = project
        self.store = JobStore(project.db, retry_backoff_s=settings.job_retry_backoff_s)
        self.queues = [Queue(q).value for q in queues] if queues is not None else [q.value for q in Queue]
        self.workers = max(1, workers)
        self.poll_s = poll_s
        self.idle_poll_max_s = max(poll_s, idle_poll_max_s)
        self.stale_after_s = stale_after_s if stale_after_s is not None else settings.job_stale_after_s
        self.heartbeat_s = (
            heartbeat_s if heartbeat_s is not None else max(0.05, min(5.0, self.stale_after_s / 4))
        )
        self.name = worker_name(f"embedded-{id(self) & 0xFFFF:x}")
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running: dict[int, str] = {}  # job id -> worker name
        self._lock = threading.Lock()

    # -- life cycle -------------------------------------------------------------------------------------

    def start(self) -> EmbeddedBackend:
        """Recover rows left running by dead workers, then start the worker and heartbeat threads."""
        self.recover()
        self._stop.clear()
        for index in range(self.workers):
            thread = threading.Thread(target=self._work, args=(f"{self.name}-{index}",), daemon=True)
            thread.start()
            self._threads.append(thread)
        beat = threading.Thread(target=self._beat, name=f"{self.name}-heartbeat", daemon=True)
        beat.start()
        self._threads.append(beat)
        return self

    def shutdown(self, timeout: float | None = None) -> list[int]:
        """Stop claiming and let running jobs finish; after `timeout` seconds the ones still running go back
        to the queue for another worker. Returns the ids handed back."""
        self._stop.set()
        self._wake.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        self._threads = [thread for thread in self._threads if thread.is_alive()]
        with self._lock:
            left = dict(self._running)
        handed_back = [job_id for job_id, worker in left.items() if self.store.release(job_id, worker)]
        return handed_back

    def __enter__(self) -> EmbeddedBackend:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown(timeout=30.0)

    # -- the API callers use ----------------------------------------------------------------------------

    def submit(self, request: JobRequest) -> int:
        job_id = self.store.submit(request)
        self._wake.set()
        return job_id

    def get(self, job_id: int) -> JobInfo:
        return self.store.get(job_id)

    def wait(self, job_id: int, timeout: float = 60.0) -> JobInfo:
        """Block until the job finishes (or `timeout`); a job finished by this pool wakes the caller at once."""
        return self.store.wait(job_id, timeout)

    def cancel(self, job_id: int) -> JobStatus:
        return self.store.cancel(job_id)

    def retry(self, job_id: int) -> JobInfo:
        info = self.store.retry(job_id)
        self._wake.set()
        return info

    def recover(self) -> tuple[list[int], list[int]]:
        requeued, interrupted = self.store.recover(self.stale_after_s)
        if requeued:
            log.warning("requeued jobs %s whose worker stopped; interrupted: %s", requeued, interrupted)
            self._wake.set()
        return requeued, interrupted

    # -- threads ----------------------------------------------------------------------------------------

    def _work(self, worker: str) -> None:
        idle = self.poll_s
        while not self._stop.is_set():
            try:
                job = self.store.claim(worker, self.queues)
            except Exception:  # the database may be briefly unavailable; keep the worker alive
                log.exception("claiming a job failed; retrying")
                job = None
            if job is None:
                self._wake.wait(idle)
                self._wake.clear()
                idle = min(self.idle_poll_max_s, idle * 1.5)
                continue
            idle = self.poll_s
            with self._lock:
                self._running[job.id] = worker
            try:
                run_claimed(self.project, self.store, job, worker, submit=self.submit)
            except Exception:
                log.exception("recording the outcome of job %s failed; recovery will requeue it", job.id)
            finally:
                with self._lock:
                    self._running.pop(job.id, None)
            self._wake.set()  # a finished job may unblock retries or children: look again at once

    def _beat(self) -> None:
        beats = 0
        while not self._stop.wait(self.heartbeat_s):
            with self._lock:
                running = dict(self._running)
            try:
                for job_id, worker in running.items():
                    self.store.heartbeat(worker, [job_id])
                beats += 1
                if beats % 4 == 0:
                    self.recover()
            except Exception:
                log.exception("heartbeat failed; retrying")
