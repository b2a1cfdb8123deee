"""The scale-out backend: Procrastinate workers on PostgreSQL run the same stages from the same job table.
Workers run as real `flenwheel worker` processes (FLENWHEEL_JOBS=procrastinate), or in a thread here."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from test_restart import SLOW_TINY, generated_assets
from workers import kill, start_worker, stop, wait_for

from flenwheel.characters import create_character
from flenwheel.config import Settings
from flenwheel.jobs.base import JobRequest, JobStatus, Queue
from flenwheel.jobs.procrastinate_backend import ProcrastinateBackend, ensure_schema
from flenwheel.jobs.store import JobStore
from flenwheel.jobs.worker import run_worker
from flenwheel.store.project import Project

from patience import HANG_S, finished

on_postgres = pytest.mark.parametrize("any_project", ["postgres"], indirect=True)
# A worker silent for this long is taken for dead. Short, so a killed worker is noticed soon; not so short that
# a live worker starved of CPU on a loaded machine (heartbeats every stale/4 s) is taken for dead too.
STALE_AFTER_S = 10.0
PROCRASTINATE = {"FLENWHEEL_JOBS": "procrastinate", "FLENWHEEL_JOB_STALE_AFTER_S": str(STALE_AFTER_S)}


@pytest.fixture
def pg(any_project: Project) -> Project:
    any_project.settings.jobs = "procrastinate"
    any_project.settings.job_retry_backoff_s = 0.0
    any_project.settings.job_stale_after_s = STALE_AFTER_S
    return any_project


@pytest.fixture
def worker_thread(pg: Project) -> Iterator[threading.Event]:
    """A Procrastinate worker (concurrency 2) on every queue, in a thread of this process."""
    stop_event = threading.Event()
    thread = threading.Thread(target=run_worker, args=(pg, None, 2, stop_event), daemon=True)
    thread.start()
    yield stop_event
    stop_event.set()
    thread.join(30)


@on_postgres
def test_schema_is_applied_once_and_only_when_missing(pg: Project) -> None:
    assert ensure_schema(pg) is True
    assert ensure_schema(pg) is False
    with pg.db.engine.connect() as connection:
        assert connection.execute(text("SELECT to_regclass('procrastinate_jobs') IS NOT NULL")).scalar()


@on_postgres
def test_a_submitted_job_runs_on_a_procrastinate_worker(pg: Project, worker_thread: threading.Event) -> None:
    with ProcrastinateBackend(pg) as backend:
        job_id = backend.submit(
            JobRequest(kind="sleep", queue=Queue.API, payload={"steps": 3, "step_s": 0.01})
        )
        done = finished(backend, job_id)
    assert done.status == JobStatus.SUCCEEDED and (done.progress_done, done.progress_total) == (3, 3)
    assert done.worker is not None and ":pq-" in done.worker
    with pg.db.engine.connect() as connection:
        tasks = connection.execute(text("SELECT queue_name, args->>'job_id' FROM procrastinate_jobs")).all()
    assert tasks == [("api", str(job_id))]  # the task carries only the job id, on the row's queue


@on_postgres
def test_failures_are_failed_at_once_and_transient_ones_retried(
    pg: Project, worker_thread: threading.Event
) -> None:
    with ProcrastinateBackend(pg) as backend:
        failing = backend.submit(JobRequest(kind="sleep", payload={"fail": "engine said no"}))
        flaky = backend.submit(JobRequest(kind="sleep", payload={"transient_failures": 1, "steps": 1}))
        failed = finished(backend, failing)
        assert failed.status == JobStatus.FAILED and failed.error == "engine said no"
        assert (
            failed.attempts == 1
        )  # seed 003's "within 3 s": a permanent error is neither retried nor delayed
        done = finished(backend, flaky)
        assert done.status == JobStatus.SUCCEEDED and done.attempts == 2
        assert done.external_ids == {"sleep_attempt": "2"}


@on_postgres
def test_a_task_delivered_before_run_after_leaves_the_row_waiting(pg: Project) -> None:
    """Procrastinate schedules the retry itself (`schedule_in`); the row's `run_after` still decides: a task
    delivered early does not run the job, and the sweep for undelivered rows skips it until it is due."""
    from datetime import timedelta

    from sqlalchemy import update

    from flenwheel.jobs.procrastinate_backend import _delay_of, _WorkerState
    from flenwheel.jobs.store import utcnow
    from flenwheel.store.models import Job

    ensure_schema(pg)
    store = JobStore(pg.db, retry_backoff_s=3600.0)
    job_id = store.submit(JobRequest(kind="noop"))
    store.claim("w1")
    assert store.fail(job_id, "w1", "timeout", transient=True) == JobStatus.QUEUED
    assert 0 < _delay_of(store.get(job_id)) <= 300  # deferred with the row's own wait
    state = _WorkerState(pg, ["cpu", "gpu", "api"])
    old = utcnow() - timedelta(minutes=1)
    with pg.db.session() as session:  # not a row its client is deferring right now
        session.execute(update(Job).where(Job.id == job_id).values(created_at=old))
    assert state.run(job_id) is None and store.get(job_id).status == JobStatus.QUEUED
    assert job_id not in [job.id for job in state.undelivered()]
    with pg.db.session() as session:  # its backoff has passed
        session.execute(update(Job).where(Job.id == job_id).values(run_after=old))
    assert _delay_of(store.get(job_id)) == 0.0
    assert job_id in [job.id for job in state.undelivered()]
    done = state.run(job_id)
    assert done is not None and (done.status, done.attempts) == (JobStatus.SUCCEEDED, 2)


@on_postgres
def test_cancel_a_running_job_and_retry_it(pg: Project, worker_thread: threading.Event) -> None:
    with ProcrastinateBackend(pg) as backend:
        job_id = backend.submit(JobRequest(kind="sleep", payload={"steps": 10_000, "step_s": 0.01}))
        wait_for(backend.store, job_id, lambda job: job.progress_done >= 2)
        assert backend.cancel(job_id) == JobStatus.RUNNING
        assert finished(backend, job_id).status == JobStatus.CANCELLED
        backend.store.get(job_id)
        again = backend.retry(job_id)
        assert again.status == JobStatus.QUEUED
        wait_for(backend.store, job_id, lambda job: job.status == JobStatus.RUNNING)
        backend.cancel(job_id)
        assert finished(backend, job_id).status == JobStatus.CANCELLED


@on_postgres
def test_sigkilled_worker_of_two_the_job_finishes_once_on_the_other(
    pg: Project, s3_blob_url: str, tmp_path: Path
) -> None:
    """Two worker processes share the PostgreSQL database and an S3 bucket, as two hosts would."""
    pg = Project.init(
        Settings(project=tmp_path / "s3-project", database_url=pg.settings.database_url, blob_url=s3_blob_url)
    )
    create_character(pg, "lisa", "ohwx", "woman")
    backend = ProcrastinateBackend(pg)
    job_id = backend.submit(
        JobRequest(kind="generate", queue=Queue.GPU, payload={"character": "lisa", "request": SLOW_TINY})
    )
    workers = [start_worker(pg, "--queue", "gpu", env=PROCRASTINATE) for _ in range(2)]
    logs: list[str] = []
    try:
        running = wait_for(
            backend.store, job_id, lambda j: j.status == JobStatus.RUNNING and j.progress_done >= 2
        )
        pid = int((running.worker or "").split(":")[1])
        [victim] = [w for w in workers if w.pid == pid]
        kill(victim)
        done = wait_for(backend.store, job_id, lambda j: j.status.finished)
    finally:
        for process in workers:
            logs.append(stop(process))
        backend.close()
    assert done.status == JobStatus.SUCCEEDED, (done.error, logs)
    assert done.attempts == 2 and int((done.worker or "").split(":")[1]) != pid
    assert done.result["seed"] == int(running.external_ids["seed"])
    assets = generated_assets(pg)
    assert sorted(a for a, _ in assets) == sorted(done.result["asset_ids"]) and len(assets) == 2
    assert {job for _, job in assets} == {job_id}
    for sha256 in done.result["sha256"]:  # the images are in the bucket, readable from here
        assert pg.blobs.fs.exists(pg.blobs.url(sha256).removeprefix("s3://"))
        assert pg.blobs.get(sha256).startswith(b"\x89PNG")
    pg.close()


@on_postgres
def test_claimers_in_several_processes_never_take_the_same_job(pg: Project) -> None:
    import subprocess
    import sys

    store = JobStore(pg.db)
    ids = {store.submit(JobRequest(kind="noop")) for _ in range(60)}
    script = (
        "import sys; from flenwheel.store.database import Database; from flenwheel.jobs.store import JobStore\n"
        "store = JobStore(Database(sys.argv[1]))\n"
        "while (job := store.claim(sys.argv[2])) is not None: print(job.id, flush=True)\n"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, pg.db.url, f"proc{i}"], stdout=subprocess.PIPE, text=True
        )
        for i in range(4)
    ]
    claimed = [int(line) for process in processes for line in process.communicate(timeout=HANG_S)[0].split()]
    assert sorted(claimed) == sorted(ids)  # every job once, none twice
    assert all(store.get(job_id).attempts == 1 for job_id in ids)


@on_postgres
def test_a_stopping_worker_hands_its_running_job_back_to_the_queue(pg: Project) -> None:
    stop_event = threading.Event()
    thread = threading.Thread(target=run_worker, args=(pg, None, 1, stop_event, 0.2), daemon=True)
    thread.start()
    with ProcrastinateBackend(pg) as backend:
        job_id = backend.submit(JobRequest(kind="sleep", payload={"steps": 100_000, "step_s": 0.01}))
        wait_for(backend.store, job_id, lambda job: job.status == JobStatus.RUNNING)
        stop_event.set()
        thread.join(HANG_S)
        assert not thread.is_alive(), f"the worker did not stop in {HANG_S:.0f} s: it hangs"
        handed_back = backend.store.get(job_id)
    assert handed_back.status == JobStatus.QUEUED and handed_back.attempts == 0
    assert "shutting down" in handed_back.message
