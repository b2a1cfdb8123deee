"""Races on the job table, on SQLite and PostgreSQL: a stale worker against the worker that took its row over,
a user's cancel or retry against a worker, two recoveries at once, and many workers at once.

Where a race needs an exact interleaving, `meanwhile` runs the other party's call at the moment the call under
test sends its first write of the `job` table to the database — after anything it read, before it writes —
through SQLAlchemy's own event hook; nothing of flenwheel is patched.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import event, func, select

from flenwheel.errors import InvalidInput
from flenwheel.jobs.base import JobRequest, JobStatus
from flenwheel.jobs.store import JobInfo, JobStore
from flenwheel.store.database import Database
from flenwheel.store.models import Job
from flenwheel.store.project import Project

UNFINISHED = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
FINISHED = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.INTERRUPTED}


def _store(project: Project) -> JobStore:
    return JobStore(project.db, retry_backoff_s=0.0)


@contextmanager
def meanwhile(db: Database, step: Callable[[], Any]) -> Iterator[None]:
    """Run `step` just before this thread's next UPDATE of the job table reaches the database."""
    caller = threading.get_ident()
    fired: list[bool] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if (
            fired
            or threading.get_ident() != caller
            or not statement.lstrip().upper().startswith("UPDATE JOB")
        ):
            return
        fired.append(True)  # first, so that the step's own writes pass straight through
        step()

    event.listen(db.engine, "before_cursor_execute", before)
    try:
        yield
    finally:
        event.remove(db.engine, "before_cursor_execute", before)
    assert fired, "the call under test never wrote the job table"


def _recover_from(store: JobStore, stale_worker: str) -> tuple[list[int], list[int]]:
    """Recovery that finds `stale_worker` gone (as a stale heartbeat or a dead pid would)."""
    return store.recover(3600, alive=lambda worker: worker != stale_worker)


def _take_over(store: JobStore, job_id: int) -> None:
    """What happens while worker A is away: its row is recovered and worker B claims it."""
    assert _recover_from(store, "A") == ([job_id], [])
    claimed = store.claim("B", job_id=job_id)
    assert claimed is not None and claimed.id == job_id


def _assert_runs_under_b(info: JobInfo, why: str = "") -> None:
    assert (info.status, info.worker, info.attempts) == (JobStatus.RUNNING, "B", 2), why
    assert info.error is None and info.finished_at is None and not info.cancel_requested, why


STALE_OUTCOMES: dict[str, Callable[[JobStore, int], object]] = {
    "fail": lambda store, job_id: store.fail(job_id, "A", "A's engine broke"),
    "fail transient": lambda store, job_id: store.fail(job_id, "A", "A timed out", transient=True),
    "complete": lambda store, job_id: store.complete(job_id, "A", {"by": "A"}, cost_usd=1.0),
    "cancelled by stage": lambda store, job_id: store.cancelled_by_stage(job_id, "A"),
}


def _a_stale_outcome_leaves_b_alone(project: Project, racing: bool) -> None:
    """For each outcome of A: A claims, its row is recovered and claimed by B, and then — or, `racing`, after
    A's call has looked at the row and before it writes — A reports its outcome. B's claim must stand."""
    store = _store(project)
    for outcome, report in STALE_OUTCOMES.items():
        job_id = store.submit(JobRequest(kind="noop"))
        assert store.claim("A", job_id=job_id) is not None
        if racing:
            with meanwhile(project.db, lambda: _take_over(store, job_id)):  # noqa: B023 (runs in this loop)
                answer = report(store, job_id)
        else:
            _take_over(store, job_id)
            answer = report(store, job_id)
        assert answer in (None, False), f"A's stale {outcome} was accepted: {answer}"
        _assert_runs_under_b(store.get(job_id), f"after A's stale {outcome}")
        assert store.complete(job_id, "B", {"by": "B"}), f"B's result thrown away after A's {outcome}"
        assert store.get(job_id).result == {"by": "B"}


def test_a_stale_workers_outcome_leaves_the_next_workers_claim_alone(any_project: Project) -> None:
    _a_stale_outcome_leaves_b_alone(any_project, racing=False)


def test_a_stale_outcome_racing_the_takeover_leaves_the_new_claim_alone(any_project: Project) -> None:
    _a_stale_outcome_leaves_b_alone(any_project, racing=True)


def test_a_cancel_racing_a_complete_leaves_the_result_as_it_was(any_project: Project) -> None:
    store = _store(any_project)
    job_id = store.submit(JobRequest(kind="noop"))
    assert store.claim("A") is not None
    with meanwhile(any_project.db, lambda: store.complete(job_id, "A", {"by": "A"})):
        assert store.cancel(job_id) == JobStatus.SUCCEEDED
    done = store.get(job_id)
    assert (done.status, done.result, done.message) == (JobStatus.SUCCEEDED, {"by": "A"}, "done")
    assert not done.cancel_requested


def test_a_cancel_of_a_queued_job_racing_its_claim_asks_the_new_worker_to_stop(any_project: Project) -> None:
    store = _store(any_project)
    job_id = store.submit(JobRequest(kind="noop"))
    with meanwhile(any_project.db, lambda: store.claim("B")):
        assert store.cancel(job_id) == JobStatus.RUNNING
    info = store.get(job_id)
    assert (info.status, info.worker, info.cancel_requested) == (JobStatus.RUNNING, "B", True)
    assert store.cancel_requested(job_id, "B")
    assert store.cancelled_by_stage(job_id, "B")
    assert store.get(job_id).status == JobStatus.CANCELLED


def test_a_cancel_after_the_end_changes_nothing(any_project: Project) -> None:
    store = _store(any_project)
    job_id = store.submit(JobRequest(kind="noop"))
    store.claim("A")
    assert store.fail(job_id, "A", "broken") == JobStatus.FAILED
    assert store.cancel(job_id) == JobStatus.FAILED
    failed = store.get(job_id)
    assert (failed.status, failed.error, failed.cancel_requested) == (JobStatus.FAILED, "broken", False)


def test_retry_of_a_running_job_is_refused_and_leaves_it_running(any_project: Project) -> None:
    store = _store(any_project)
    job_id = store.submit(JobRequest(kind="noop"))
    store.claim("A")
    with pytest.raises(InvalidInput, match=f"job {job_id} is running"):
        store.retry(job_id)
    info = store.get(job_id)
    assert (info.status, info.worker, info.attempts) == (JobStatus.RUNNING, "A", 1)


def test_a_retry_racing_another_retry_and_its_claim_is_refused(any_project: Project) -> None:
    """Two users press retry at once; the first one's job is already running again when the second writes."""
    store = _store(any_project)
    job_id = store.submit(JobRequest(kind="noop", max_attempts=1))
    store.claim("A")
    assert store.fail(job_id, "A", "broken") == JobStatus.FAILED

    def other_retry_and_claim() -> None:
        assert store.retry(job_id).status == JobStatus.QUEUED
        assert store.claim("B") is not None

    with meanwhile(any_project.db, other_retry_and_claim), pytest.raises(InvalidInput, match="is running"):
        store.retry(job_id)
    _assert_runs_under_b(store.get(job_id))
    assert store.get(job_id).max_attempts == 2


def test_two_recoveries_at_once_requeue_a_lost_job_once(any_project: Project) -> None:
    store = _store(any_project)
    job_id = store.submit(JobRequest(kind="noop"))
    store.claim("A")
    with meanwhile(any_project.db, lambda: _take_over(store, job_id)):
        assert _recover_from(store, "A") == ([], [])
    _assert_runs_under_b(store.get(job_id))


def test_recovery_leaves_a_worker_that_beat_in_the_meantime(any_project: Project) -> None:
    """The heartbeat was stale when recovery looked, and fresh again when it came to write."""
    store = _store(any_project)
    job_id = store.submit(JobRequest(kind="noop"))
    store.claim("A")
    time.sleep(0.01)  # so that "stale after 5 ms" holds for the claim's own heartbeat
    with meanwhile(any_project.db, lambda: store.heartbeat("A")):
        assert store.recover(0.005) == ([], [])
    info = store.get(job_id)
    assert (info.status, info.worker) == (JobStatus.RUNNING, "A")


def test_many_recoveries_at_once_requeue_each_lost_job_once(any_project: Project) -> None:
    store = _store(any_project)
    ids = [store.submit(JobRequest(kind="noop")) for _ in range(12)]
    for job_id in ids:
        store.claim(f"lost-{job_id}")
    start = threading.Barrier(4)
    requeued: list[int] = []
    lock = threading.Lock()

    def recover() -> None:
        start.wait()
        found, interrupted = store.recover(3600, alive=lambda worker: not str(worker).startswith("lost-"))
        assert interrupted == []
        with lock:
            requeued.extend(found)

    threads = [threading.Thread(target=recover) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(requeued) == ids
    assert store.count(JobStatus.QUEUED) == len(ids)


# -- many workers at once ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    job_id: int
    number: int
    worker: str


@dataclass(frozen=True)
class Ending:
    attempt: Attempt
    call: str  # complete | fail | fail transient | cancelled by stage
    answer: object  # what the store answered


class StressLog:
    """What every thread did and what the store answered, for the checks after the run."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.claims: list[Attempt] = []
        self.endings: list[Ending] = []
        self.recovered: Counter[int] = Counter()
        self.user_cancels: dict[int, JobStatus] = {}
        self.errors: list[BaseException] = []

    def add(self, items: list[Any], item: Any) -> None:
        with self.lock:
            items.append(item)


def _stress_worker(
    store: JobStore, log: StressLog, index: int, dead: set[str], done: threading.Event
) -> None:
    rng = random.Random(index)
    serial = 0
    while not done.is_set():
        serial += 1
        worker = f"w{index}-{serial}"  # one name per attempt, so every outcome names its attempt
        job = store.claim(worker)
        if job is None:
            done.wait(0.002)
            continue
        attempt = Attempt(job.id, job.attempts, worker)
        log.add(log.claims, attempt)
        if rng.random() < 0.2:
            with log.lock:
                dead.add(worker)  # this attempt goes silent: a recovery may hand its row on meanwhile
        roll = rng.random()
        if roll < 0.4:
            call, answer = "fail transient", store.fail(job.id, worker, f"{worker} timed out", transient=True)
        elif roll < 0.5:
            call, answer = "fail", store.fail(job.id, worker, f"{worker} broke")
        elif roll < 0.55:
            call, answer = "cancelled by stage", store.cancelled_by_stage(job.id, worker)
        else:
            call, answer = "complete", store.complete(job.id, worker, {"by": worker}, cost_usd=0.5)
        log.add(log.endings, Ending(attempt, call, answer))


def _stress_recoverer(store: JobStore, log: StressLog, dead: set[str], done: threading.Event) -> None:
    def alive(worker: str | None) -> bool:
        with log.lock:
            return worker not in dead

    while not done.is_set():
        requeued, interrupted = store.recover(3600, alive=alive)
        with log.lock:
            log.recovered.update(requeued + interrupted)
        done.wait(0.003)


def _stress_canceller(store: JobStore, log: StressLog, ids: list[int], done: threading.Event) -> None:
    rng = random.Random(99)
    for job_id in rng.sample(ids, len(ids) // 6):
        if done.wait(rng.random() * 0.02):
            return
        status = store.cancel(job_id)
        with log.lock:
            log.user_cancels[job_id] = status


def _guarded(log: StressLog, target: Callable[..., None], *args: Any) -> threading.Thread:
    def run() -> None:
        try:
            target(*args)
        except BaseException as exc:
            log.add(log.errors, exc)

    return threading.Thread(target=run, daemon=True)


def _unfinished(project: Project) -> int:
    """Queued and running rows, counted in one statement (two counts could miss a row moving between them)."""
    with project.db.session() as session:
        return int(
            session.scalar(select(func.count()).select_from(Job).where(Job.status.in_(UNFINISHED))) or 0
        )


def test_many_workers_at_once_leave_every_job_in_one_consistent_final_state(any_project: Project) -> None:
    store = _store(any_project)
    ids = [store.submit(JobRequest(kind="noop", max_attempts=3)) for _ in range(48)]
    log, dead, done = StressLog(), set[str](), threading.Event()
    threads = [_guarded(log, _stress_worker, store, log, index, dead, done) for index in range(6)]
    threads += [_guarded(log, _stress_recoverer, store, log, dead, done) for _ in range(2)]
    threads.append(_guarded(log, _stress_canceller, store, log, ids, done))
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 600  # a hang guard, not a timing check
    while not log.errors and _unfinished(any_project):
        assert time.monotonic() < deadline, [store.get(job_id) for job_id in ids]
        time.sleep(0.02)
    done.set()
    for thread in threads:
        thread.join(timeout=120)
    assert not log.errors, log.errors

    claims: dict[int, list[Attempt]] = defaultdict(list)
    for attempt in log.claims:
        claims[attempt.job_id].append(attempt)
    accepted: dict[int, list[Ending]] = defaultdict(list)
    for ending in log.endings:
        if ending.answer not in (None, False):
            accepted[ending.attempt.job_id].append(ending)

    for job_id in ids:
        row = store.get(job_id)
        tried = sorted(claims[job_id], key=lambda attempt: attempt.number)
        assert row.status in FINISHED, row
        # Attempts are counted once per claim, and every claim got the next number.
        assert [attempt.number for attempt in tried] == list(range(1, row.attempts + 1)), (row, tried)
        # Every attempt ended exactly once: by its own worker's outcome, or by a recovery.
        assert len(accepted[job_id]) + log.recovered[job_id] == len(tried), (row, tried, accepted[job_id])
        # Whatever finished the row came from its last attempt, never from a stale one.
        last = tried[-1] if tried else None
        final = [ending for ending in accepted[job_id] if ending.answer != JobStatus.QUEUED]
        assert len(final) <= 1, final
        if row.status == JobStatus.SUCCEEDED:
            assert [(e.attempt, e.call) for e in final] == [(last, "complete")], (row, final)
            assert row.result == {"by": last.worker} and row.cost_usd == 0.5  # type: ignore[union-attr]
        elif row.status == JobStatus.FAILED:
            assert [e.attempt for e in final] == [last] and final[0].call.startswith("fail"), (row, final)
            assert row.error in (f"{last.worker} timed out", f"{last.worker} broke"), row  # type: ignore[union-attr]
        elif row.status == JobStatus.INTERRUPTED:
            assert final == [] and row.attempts == row.max_attempts and log.recovered[job_id] > 0, row
        else:  # cancelled: by its stage, by the user while queued, or recovered after a cancel request
            assert job_id in log.user_cancels or final, (row, final)
            assert [e.attempt for e in final] in ([], [last]), (row, final)
        for ending in accepted[job_id]:
            if ending.answer == JobStatus.QUEUED:  # a transient failure is retried only with attempts left
                assert ending.attempt.number < row.max_attempts, ending
