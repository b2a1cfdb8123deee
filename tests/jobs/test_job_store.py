"""The job table as both backends share it: status machine, priority and queues, atomic claims, cancel,
retry with backoff, recovery of rows whose worker died, listing — on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from flenwheel.errors import InvalidInput
from flenwheel.jobs.base import JobRequest, JobStatus, Queue
from flenwheel.jobs.store import MAX_BACKOFF_S, JobNotFound, JobStore, utcnow
from flenwheel.store.models import Job
from flenwheel.store.project import Project


def _store(project: Project) -> JobStore:
    return JobStore(project.db, retry_backoff_s=0.0)


def test_a_job_goes_queued_running_succeeded_with_its_result(any_project: Project) -> None:
    store = _store(any_project)
    job_id = store.submit(JobRequest(kind="noop", payload={"x": 1}))
    assert store.get(job_id).status == JobStatus.QUEUED
    claimed = store.claim("w1")
    assert claimed is not None and claimed.id == job_id and claimed.status == JobStatus.RUNNING
    assert (claimed.attempts, claimed.worker) == (1, "w1") and claimed.started_at is not None
    store.progress(job_id, 2, 5, "two of five")
    assert (store.get(job_id).progress_done, store.get(job_id).progress_total) == (2, 5)
    assert store.complete(job_id, "w1", {"ok": True}, cost_usd=0.25)
    done = store.get(job_id)
    assert (done.status, done.result, done.cost_usd) == (JobStatus.SUCCEEDED, {"ok": True}, 0.25)
    assert done.progress_done == done.progress_total == 5 and done.finished_at is not None
    assert store.claim("w2") is None


def test_higher_priority_first_then_oldest_and_only_the_queues_asked_for(any_project: Project) -> None:
    store = _store(any_project)
    low = store.submit(JobRequest(kind="noop", queue=Queue.CPU))
    gpu = store.submit(JobRequest(kind="noop", queue=Queue.GPU, priority=50))
    high = store.submit(JobRequest(kind="noop", queue=Queue.CPU, priority=10))
    second_low = store.submit(JobRequest(kind="noop", queue=Queue.CPU))
    order = [job.id for job in iter(lambda: store.claim("cpu-worker", ["cpu"]), None)]
    assert order == [high, low, second_low]
    assert store.get(gpu).status == JobStatus.QUEUED
    claimed = store.claim("gpu-worker", ["gpu", "api"])
    assert claimed is not None and claimed.id == gpu


def test_only_the_owning_worker_can_finish_a_job(any_project: Project) -> None:
    store = _store(any_project)
    job_id = store.submit(JobRequest(kind="noop"))
    store.claim("w1")
    assert not store.complete(job_id, "someone-else", {"stolen": True})
    assert store.fail(job_id, "someone-else", "nope") is None
    assert store.get(job_id).status == JobStatus.RUNNING


def test_concurrent_threads_never_claim_the_same_job(any_project: Project) -> None:
    store = _store(any_project)
    ids = [store.submit(JobRequest(kind="noop")) for _ in range(40)]
    claims: list[tuple[str, int]] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        while (job := store.claim(name)) is not None:
            with lock:
                claims.append((name, job.id))

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts = Counter(job_id for _, job_id in claims)
    assert sorted(counts) == ids and set(counts.values()) == {1}
    assert all(store.get(job_id).attempts == 1 for job_id in ids)


def test_transient_failure_is_requeued_until_attempts_run_out(any_project: Project) -> None:
    store = _store(any_project)
    job_id = store.submit(JobRequest(kind="noop", max_attempts=2))
    store.claim("w1")
    assert store.fail(job_id, "w1", "engine busy (HTTP 503)", transient=True) == JobStatus.QUEUED
    assert "engine busy" in store.get(job_id).message
    store.claim("w1")
    assert store.fail(job_id, "w1", "engine busy (HTTP 503)", transient=True) == JobStatus.FAILED
    failed = store.get(job_id)
    assert (failed.status, failed.error, failed.attempts) == (JobStatus.FAILED, "engine busy (HTTP 503)", 2)


def test_a_transient_failure_waits_out_its_backoff_before_another_claim(any_project: Project) -> None:
    store = JobStore(any_project.db, retry_backoff_s=3600.0)
    job_id = store.submit(JobRequest(kind="noop"))
    store.claim("w1")
    assert store.fail(job_id, "w1", "timeout", transient=True) == JobStatus.QUEUED
    assert store.claim("w1") is None  # not before its backoff has passed


def test_a_retry_waits_for_its_run_after_and_heartbeat_at_is_only_the_heartbeat(any_project: Project) -> None:
    """The backoff has its own column: a queued retry is not claimed before `run_after` and is claimed once it
    has passed (time driven by moving `run_after`, no sleeping), and `heartbeat_at` keeps meaning "the worker
    was alive then" — a queued row whose last heartbeat lies ahead (a worker host's clock running fast) is not
    held back by it."""
    store = JobStore(any_project.db, retry_backoff_s=3600.0)
    job_id = store.submit(JobRequest(kind="noop"))
    claimed = store.claim("w1")
    assert claimed is not None and claimed.run_after is None
    before = utcnow()
    assert store.fail(job_id, "w1", "timeout", transient=True) == JobStatus.QUEUED
    waiting = store.get(job_id)
    assert waiting.run_after is not None and waiting.heartbeat_at is None
    assert _aware(waiting.run_after) >= before + timedelta(seconds=MAX_BACKOFF_S)  # 3600 s, capped
    assert store.claim("w1") is None and store.claim("w1", job_id=job_id) is None  # not before run_after
    with any_project.db.session() as session:  # time passes: run_after is now in the past
        session.execute(update(Job).where(Job.id == job_id).values(run_after=utcnow() - timedelta(seconds=1)))
    again = store.claim("w2")
    assert again is not None and (again.id, again.attempts, again.run_after) == (job_id, 2, None)

    other = store.submit(JobRequest(kind="noop"))
    with any_project.db.session() as session:  # a fast clock's heartbeat, then handed back to the queue
        session.execute(update(Job).where(Job.id == other).values(heartbeat_at=utcnow() + timedelta(hours=1)))
    taken = store.claim("w3")
    assert taken is not None and taken.id == other


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # SQLite keeps no zone


def test_the_backoff_grows_with_each_attempt_up_to_five_minutes(any_project: Project) -> None:
    store = JobStore(any_project.db, retry_backoff_s=2.0)
    job_id = store.submit(JobRequest(kind="noop", max_attempts=20))
    for attempt, wait_s in [(1, 2), (2, 8), (3, 32), (4, 128), (5, 300), (9, 300)]:
        with any_project.db.session() as session:  # as if attempt - 1 attempts had run and waited
            session.execute(update(Job).where(Job.id == job_id).values(attempts=attempt - 1, run_after=None))
        claimed = store.claim("w1", job_id=job_id)
        assert claimed is not None and claimed.attempts == attempt
        before = utcnow()
        assert store.fail(job_id, "w1", "timeout", transient=True) == JobStatus.QUEUED
        after = utcnow()
        retry_at = store.get(job_id).run_after
        assert retry_at is not None
        retry_at = _aware(retry_at)
        assert before + timedelta(seconds=wait_s) <= retry_at <= after + timedelta(seconds=wait_s), attempt


def test_permanent_failure_fails_at_once_and_retry_queues_it_again(any_project: Project) -> None:
    store = _store(any_project)
    job_id = store.submit(JobRequest(kind="noop", max_attempts=5))
    store.claim("w1")
    assert store.fail(job_id, "w1", "the prompt is empty: give one") == JobStatus.FAILED
    store.remember_external_id(job_id, "fal", "req-123")
    again = store.retry(job_id)
    assert again.status == JobStatus.QUEUED and again.error is None
    claimed = store.claim("w2")
    assert claimed is not None and claimed.external_ids == {"fal": "req-123"} and claimed.attempts == 2


def test_retry_refuses_a_job_that_is_not_finished_badly(any_project: Project) -> None:
    store = _store(any_project)
    job_id = store.submit(JobRequest(kind="noop"))
    with pytest.raises(InvalidInput, match="only failed, cancelled or interrupted"):
        store.retry(job_id)
    with pytest.raises(JobNotFound, match="No job 9999"):
        store.retry(9999)


def test_cancel_a_queued_job_at_once_and_a_running_one_by_request(any_project: Project) -> None:
    store = _store(any_project)
    queued = store.submit(JobRequest(kind="noop"))
    running = store.submit(JobRequest(kind="noop"))
    assert store.cancel(queued) == JobStatus.CANCELLED
    assert store.claim("w1").id == running  # type: ignore[union-attr]
    assert store.cancel(running) == JobStatus.RUNNING and store.cancel_requested(running)
    assert store.cancelled_by_stage(running, "w1")
    assert store.get(running).status == JobStatus.CANCELLED
    assert store.claim("w1") is None


def test_recover_requeues_a_silent_running_job_and_interrupts_one_without_attempts(
    any_project: Project,
) -> None:
    store = _store(any_project)
    again = store.submit(JobRequest(kind="noop", max_attempts=2))
    last = store.submit(JobRequest(kind="noop", max_attempts=1))
    store.claim("other-host:1:a")
    store.claim("other-host:1:b")
    assert store.recover(timeout_s=3600) == ([], [])  # heartbeats are fresh: nothing is lost
    requeued, interrupted = store.recover(timeout_s=0)
    assert (requeued, interrupted) == ([again], [last])
    assert store.get(again).status == JobStatus.QUEUED
    lost = store.get(last)
    assert lost.status == JobStatus.INTERRUPTED and "jobs retry" in (lost.error or "")
    assert not store.complete(again, "other-host:1:a", {})  # the dead worker cannot finish it any more


def test_list_filters_and_pages(any_project: Project) -> None:
    from flenwheel.characters import create_character

    create_character(any_project, "lisa", "ohwx", "woman")
    store = _store(any_project)
    ids = [store.submit(JobRequest(kind="noop", character_id=1)) for _ in range(3)]
    other = store.submit(JobRequest(kind="sleep"))
    store.cancel(ids[0])
    assert [j.id for j in store.list_jobs(character_id=1)] == ids[::-1]
    assert [j.id for j in store.list_jobs(kind="sleep")] == [other]
    assert [j.id for j in store.list_jobs(status="cancelled")] == [ids[0]]
    assert [j.id for j in store.list_jobs(limit=2, offset=1)] == [ids[2], ids[1]]
