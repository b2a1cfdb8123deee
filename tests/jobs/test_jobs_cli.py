"""`flenwheel jobs …` and `flenwheel worker` as a user runs them: the installed script in subprocesses."""

from __future__ import annotations

import json
import subprocess

from workers import FLENWHEEL, start_worker, stop, wait_for

from flenwheel.jobs.base import JobStatus
from flenwheel.jobs.store import JobStore
from flenwheel.store.project import Project

from patience import HANG_S


def cli(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FLENWHEEL), "--project", str(project.root), *args],
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )


def test_submit_list_cancel_retry_and_a_worker_that_stops_cleanly(project: Project) -> None:
    queued = json.loads(cli(project, "jobs", "submit", "sleep", "--payload", '{"steps": 2}', "--json").stdout)
    failing = json.loads(
        cli(project, "jobs", "submit", "sleep", "--payload", '{"fail": "no engine"}', "--json").stdout
    )
    listed = json.loads(cli(project, "jobs", "ls", "--status", "queued", "--json").stdout)
    assert [job["id"] for job in listed] == [failing["id"], queued["id"]]
    assert "cancelled" in cli(project, "jobs", "cancel", str(queued["id"])).stdout
    assert "queued again" in cli(project, "jobs", "retry", str(queued["id"])).stdout

    worker = start_worker(project, "--queue", "cpu", "--concurrency", "2")
    store = JobStore(project.db)
    try:
        failed = wait_for(store, failing["id"], lambda job: job.status.finished)
        done = wait_for(store, queued["id"], lambda job: job.status.finished)
    finally:
        log = stop(worker)
    assert worker.returncode == 0, log
    assert (failed.status, failed.error) == (JobStatus.FAILED, "no engine")
    assert done.status == JobStatus.SUCCEEDED
    shown = json.loads(cli(project, "jobs", "show", str(failing["id"]), "--json").stdout)
    assert shown["status"] == "failed" and shown["error"] == "no engine"
    table = cli(project, "jobs", "ls").stdout
    assert "no engine" in table and "succeeded" in table


def test_clear_errors_for_unknown_kinds_queues_and_jobs(project: Project) -> None:
    unknown = cli(project, "jobs", "submit", "paint")
    assert unknown.returncode != 0 and "No job kind 'paint'" in unknown.stderr
    assert "generate" in unknown.stderr and "chain_train" in unknown.stderr  # the pipeline's kinds count
    bad_queue = cli(project, "worker", "--queue", "tpu")
    assert bad_queue.returncode != 0 and "use one of api, cpu, gpu" in bad_queue.stderr
    missing = cli(project, "jobs", "show", "42")
    assert missing.returncode != 0 and "No job 42" in missing.stderr
    not_json = cli(project, "jobs", "submit", "noop", "--payload", "{oops")
    assert not_json.returncode != 0 and "--payload is not JSON" in not_json.stderr
