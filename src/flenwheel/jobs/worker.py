"""`flenwheel worker`: serve queues until SIGTERM/SIGINT, with Procrastinate when configured and the
database is PostgreSQL (FLENWHEEL_JOBS=procrastinate), else with the embedded pool on the job table."""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence

from flenwheel.errors import InvalidInput
from flenwheel.jobs.base import Queue
from flenwheel.store.project import Project


def uses_procrastinate(project: Project) -> bool:
    """Procrastinate is used when asked for; asking for it on SQLite is a clear error."""
    if project.settings.jobs != "procrastinate":
        return False
    if project.db.engine.dialect.name != "postgresql":
        raise InvalidInput(
            "FLENWHEEL_JOBS=procrastinate needs a PostgreSQL database: set FLENWHEEL_DATABASE_URL to "
            "postgresql+psycopg://… or unset FLENWHEEL_JOBS to use the embedded workers"
        )
    return True


def run_worker(
    project: Project,
    queues: Sequence[Queue | str] | None = None,
    concurrency: int = 1,
    stop: threading.Event | None = None,
    shutdown_timeout_s: float = 30.0,
) -> None:
    """Work on `queues` (default: all) until a signal arrives or `stop` is set; then running jobs get
    `shutdown_timeout_s` to finish before they are handed back to the queue."""
    chosen = [Queue(q) for q in queues] if queues else list(Queue)
    if uses_procrastinate(project):
        from flenwheel.jobs.procrastinate_backend import run_procrastinate_worker

        run_procrastinate_worker(project, chosen, concurrency, stop, shutdown_timeout_s)
        return
    from flenwheel.jobs.embedded import EmbeddedBackend

    stop = stop or threading.Event()
    _stop_on_signals(stop)
    backend = EmbeddedBackend(project, chosen, workers=concurrency).start()
    try:
        stop.wait()
    finally:
        backend.shutdown(timeout=shutdown_timeout_s)


def _stop_on_signals(stop: threading.Event) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
