"""The same jobs API when the server hands jobs to Procrastinate workers (PostgreSQL, FLENWHEEL_JOBS=procrastinate)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from webapi import Api, follow, make_api

from flenwheel.jobs.worker import run_worker
from flenwheel.store.project import Project


@pytest.fixture
def procrastinate_api(any_project: Project) -> Iterator[Api]:
    if any_project.db.engine.dialect.name != "postgresql":
        pytest.skip("Procrastinate runs on PostgreSQL only")
    any_project.settings.jobs = "procrastinate"
    any_project.settings.job_retry_backoff_s = 0.0
    stop = threading.Event()
    worker = threading.Thread(target=run_worker, args=(any_project, None, 2, stop), daemon=True)
    worker.start()
    try:
        yield from make_api(any_project, jobs="procrastinate", job_retry_backoff_s=0.0)
    finally:
        stop.set()
        worker.join(30)


@pytest.mark.parametrize("any_project", ["postgres"], indirect=True)
def test_submit_follow_and_retry_through_procrastinate(procrastinate_api: Api) -> None:
    api = procrastinate_api
    assert api.client.get("/health").json()["job_workers"] == 0  # the workers are `flenwheel worker`s
    character_id = api.character()
    ok = api.client.post(
        "/jobs",
        json={"kind": "sleep", "character_id": character_id, "payload": {"steps": 3}},
        headers=api.alice,
    ).json()
    events = follow(api, ok["id"])
    assert events[-1][1]["status"] == "succeeded" and events[-1][1]["progress_done"] == 3

    failing = api.client.post(
        "/jobs",
        json={"kind": "sleep", "character_id": character_id, "payload": {"fail": "no"}},
        headers=api.alice,
    ).json()
    assert follow(api, failing["id"])[-1][1]["status"] == "failed"
    assert api.client.post(f"/jobs/{failing['id']}/retry", headers=api.alice).json()["status"] == "queued"
    again = follow(api, failing["id"])  # the retry was handed to a worker again, and failed again
    assert again[-1][1]["status"] == "failed"
    assert api.client.get(f"/jobs/{failing['id']}", headers=api.alice).json()["attempts"] == 2
