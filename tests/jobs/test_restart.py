"""A worker process killed mid-job: the next worker resumes the job and it finishes exactly once, with no
duplicate or lost assets. Embedded pool on SQLite here; Procrastinate on PostgreSQL in test_procrastinate."""

from __future__ import annotations

from sqlalchemy import func, select
from workers import kill, start_worker, stop, wait_for

from flenwheel.characters import create_character
from flenwheel.jobs.base import JobRequest, JobStatus, Queue
from flenwheel.jobs.store import JobStore
from flenwheel.store.models import Asset
from flenwheel.store.project import Project

SLOW_TINY = {"prompt": "photo of ohwx woman", "steps": 60, "width": 64, "height": 64, "count": 2}


def generated_assets(project: Project) -> list[tuple[int, int | None]]:
    with project.db.session() as session:
        return [tuple(row) for row in session.execute(select(Asset.id, Asset.job_id).order_by(Asset.id))]


def test_sigkilled_embedded_worker_mid_job_the_next_one_finishes_it_once(project: Project) -> None:
    create_character(project, "lisa", "ohwx", "woman")
    store = JobStore(project.db)
    job_id = store.submit(
        JobRequest(kind="generate", queue=Queue.GPU, payload={"character": "lisa", "request": SLOW_TINY})
    )
    first = start_worker(project, "--queue", "gpu")
    try:
        running = wait_for(
            store, job_id, lambda job: job.status == JobStatus.RUNNING and job.progress_done >= 2
        )
        kill(first)
        assert store.get(job_id).status == JobStatus.RUNNING  # nobody has noticed yet
        seed = running.external_ids["seed"]
        second = start_worker(project, "--queue", "gpu")
        try:
            done = wait_for(store, job_id, lambda job: job.status.finished)
        finally:
            log = stop(second)
    finally:
        if first.poll() is None:
            kill(first)
    assert done.status == JobStatus.SUCCEEDED, (done.error, log)
    assert done.attempts == 2 and done.external_ids["seed"] == seed and done.result["seed"] == int(seed)
    assets = generated_assets(project)
    assert [asset_id for asset_id, _ in assets] == sorted(done.result["asset_ids"])
    assert len(assets) == 2 and {job for _, job in assets} == {job_id}
    with project.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Asset)) == 2
