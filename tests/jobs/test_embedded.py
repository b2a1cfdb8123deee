"""The embedded backend: worker threads on the project's job table run real stages with progress,
cooperative cancellation, retries of transient failures, and failures surfaced at once."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from flenwheel.characters import create_character
from flenwheel.errors import FlenwheelError
from flenwheel.jobs import kinds
from flenwheel.jobs.base import JobRequest, JobStatus, Queue
from flenwheel.jobs.embedded import EmbeddedBackend
from flenwheel.jobs.store import JobStore
from flenwheel.store.project import Project

from patience import finished


@pytest.fixture
def backend(any_project: Project) -> Iterator[EmbeddedBackend]:
    any_project.settings.job_retry_backoff_s = 0.0
    with EmbeddedBackend(any_project, workers=2) as pool:
        yield pool


def test_a_stage_reports_progress_with_the_right_total_and_its_result(backend: EmbeddedBackend) -> None:
    job_id = backend.submit(JobRequest(kind="sleep", payload={"steps": 4, "step_s": 0.01}))
    done = finished(backend, job_id)
    assert done.status == JobStatus.SUCCEEDED and done.result == {"steps": 4, "attempt": 1}
    assert (done.progress_done, done.progress_total, done.message) == (4, 4, "done")


def test_a_failing_stage_shows_failed_with_its_message_at_once(backend: EmbeddedBackend) -> None:
    job_id = backend.submit(JobRequest(kind="sleep", payload={"fail": "the engine refused the prompt"}))
    failed = finished(backend, job_id)
    assert failed.status == JobStatus.FAILED and failed.error == "the engine refused the prompt"
    # seed 003's "a failure surfaces within 3 s" holds because a permanent error is neither retried nor
    # backed off; a clock here would measure the machine's load, not flenwheel.
    assert failed.attempts == 1


def test_an_unknown_kind_fails_with_the_known_kinds(backend: EmbeddedBackend) -> None:
    job_id = backend.submit(JobRequest(kind="paint"))
    failed = finished(backend, job_id)
    assert failed.status == JobStatus.FAILED and "No job kind 'paint'" in (failed.error or "")
    assert "generate" in (failed.error or "")


def test_a_transient_failure_is_retried_then_succeeds_keeping_external_ids(backend: EmbeddedBackend) -> None:
    job_id = backend.submit(JobRequest(kind="sleep", payload={"transient_failures": 2, "steps": 1}))
    done = finished(backend, job_id)
    assert done.status == JobStatus.SUCCEEDED and done.attempts == 3
    assert done.result["attempt"] == 3 and done.external_ids == {"sleep_attempt": "3"}


def test_a_running_job_stops_when_cancelled(backend: EmbeddedBackend) -> None:
    job_id = backend.submit(JobRequest(kind="sleep", payload={"steps": 10_000, "step_s": 0.01}))
    store = backend.store
    while store.get(job_id).progress_done < 2:
        store.wait(job_id, timeout=0.05)
    assert backend.cancel(job_id) == JobStatus.RUNNING
    cancelled = finished(backend, job_id)
    assert cancelled.status == JobStatus.CANCELLED and cancelled.progress_done < 10_000


def test_a_pool_serves_only_its_queues(any_project: Project) -> None:
    with EmbeddedBackend(any_project, queues=[Queue.API], workers=1) as pool:
        cpu = pool.submit(JobRequest(kind="noop", queue=Queue.CPU))
        api = pool.submit(JobRequest(kind="noop", queue=Queue.API))
        assert finished(pool, api).status == JobStatus.SUCCEEDED
        assert pool.get(cpu).status == JobStatus.QUEUED


def test_registered_kinds_run_and_duplicates_are_refused(backend: EmbeddedBackend) -> None:
    def double(project: Project, payload: dict, ctx: object) -> dict:
        return {"value": payload["value"] * 2}

    kinds.register("test_double", double)
    try:
        with pytest.raises(kinds.DuplicateJobKind):
            kinds.register("test_double", double)
        with pytest.raises(kinds.DuplicateJobKind):
            kinds.register("generate", double)
        job_id = backend.submit(JobRequest(kind="test_double", payload={"value": 21}))
        assert finished(backend, job_id).result == {"value": 42}
    finally:
        kinds.unregister("test_double")


def test_a_kind_named_by_module_and_function_loads_when_it_first_runs(backend: EmbeddedBackend) -> None:
    kinds.register("test_echo", "flenwheel.jobs.builtin_kinds:noop")
    try:
        kinds.register("test_echo", "flenwheel.jobs.builtin_kinds:noop")  # an entry point registering again
        with pytest.raises(kinds.DuplicateJobKind):
            kinds.register("test_echo", "flenwheel.jobs.builtin_kinds:sleep")
        with pytest.raises(FlenwheelError, match='"module:name"'):
            kinds.register("test_no_function", "flenwheel.jobs.builtin_kinds")
        job_id = backend.submit(JobRequest(kind="test_echo", payload={"note": "hi"}))
        assert finished(backend, job_id).result == {"echo": {"note": "hi"}}
    finally:
        kinds.unregister("test_echo")


def test_the_job_layer_knows_the_pipeline_kinds_only_once_the_app_registers_them() -> None:
    """jobs/ never imports the pipeline: a process that only runs jobs knows no pipeline kind, and registering
    them (what `flenwheel worker` and the web app do) imports no stage either."""
    script = """
import sys
from flenwheel.jobs import embedded, kinds, procrastinate_backend, runner, worker
assert "generate" not in kinds.known_kinds() and "chain" not in kinds.known_kinds(), kinds.known_kinds()
assert not [m for m in sys.modules if m.startswith("flenwheel.pipeline")]
from flenwheel.pipeline.kinds import PIPELINE_KINDS, register_pipeline_kinds
register_pipeline_kinds()
assert set(PIPELINE_KINDS) <= set(kinds.known_kinds())
assert {m for m in sys.modules if m.startswith("flenwheel.pipeline")} == {"flenwheel.pipeline", "flenwheel.pipeline.kinds"}
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_shutdown_hands_a_running_job_back_to_the_queue(any_project: Project) -> None:
    pool = EmbeddedBackend(any_project, workers=1).start()
    job_id = pool.submit(JobRequest(kind="sleep", payload={"steps": 10_000, "step_s": 0.01}))
    while pool.get(job_id).status != JobStatus.RUNNING:
        pool.store.wait(job_id, timeout=0.05)
    handed_back = pool.shutdown(timeout=0.1)
    assert handed_back == [job_id]
    job = JobStore(any_project.db).get(job_id)
    assert job.status == JobStatus.QUEUED and job.attempts == 0
    any_project.db.engine.dispose()


def test_generate_on_the_tiny_model_stores_assets_linked_to_the_job(any_project: Project) -> None:
    create_character(any_project, "lisa", "ohwx", "woman")
    request = {"prompt": "photo of ohwx woman", "steps": 2, "width": 64, "height": 64, "count": 2}
    with EmbeddedBackend(any_project, queues=[Queue.GPU], workers=1) as pool:
        job_id = pool.submit(
            JobRequest(kind="generate", queue=Queue.GPU, payload={"character": "lisa", "request": request})
        )
        done = finished(pool, job_id)
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert len(done.result["asset_ids"]) == 2 and done.result["model"] == "tiny"
    assert "draws no faces" in done.result["note"]
    assert done.external_ids["seed"] == str(done.result["seed"])
    from sqlalchemy import select

    from flenwheel.store.models import Asset

    with any_project.db.session() as session:
        linked = session.scalars(select(Asset.id).where(Asset.job_id == job_id)).all()
    assert sorted(linked) == sorted(done.result["asset_ids"])


def test_an_attempt_that_lost_its_row_to_recovery_stops_instead_of_working_twice(
    any_project: Project,
) -> None:
    with EmbeddedBackend(any_project, workers=1, stale_after_s=3600) as pool:
        job_id = pool.submit(JobRequest(kind="sleep", payload={"steps": 100_000, "step_s": 0.01}))
        store = pool.store
        wait = store.wait
        while store.get(job_id).progress_done < 2:
            wait(job_id, timeout=0.05)
        assert store.recover(timeout_s=0) == ([job_id], [])  # as if its heartbeats had stopped
        # The pool has one thread: it can only start attempt 2 once attempt 1 has noticed and stopped.
        while (job := store.get(job_id)).attempts < 2 or job.status != JobStatus.RUNNING:
            wait(job_id, timeout=0.05)
        pool.cancel(job_id)
        assert finished(pool, job_id).status == JobStatus.CANCELLED
