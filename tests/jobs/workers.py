"""Real `flenwheel worker` processes for the restart tests: started, waited on, killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from flenwheel.jobs.store import JobInfo, JobStore
from flenwheel.store.project import Project

FLENWHEEL = Path(sys.executable).parent / "flenwheel"


def start_worker(project: Project, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`flenwheel --project P worker ARGS` on the project's database, with this test's settings."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("FLENWHEEL_")}
    environment["FLENWHEEL_JOB_RETRY_BACKOFF_S"] = "0"
    if project.settings.database_url:
        environment["FLENWHEEL_DATABASE_URL"] = project.settings.database_url.get_secret_value()
    if project.settings.blob_url:
        environment["FLENWHEEL_BLOB_URL"] = project.settings.blob_url
    if project.settings.s3_endpoint_url:
        environment["FLENWHEEL_S3_ENDPOINT_URL"] = project.settings.s3_endpoint_url
    environment.update(env or {})
    return subprocess.Popen(
        [str(FLENWHEEL), "--project", str(project.root), "worker", *args],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_for(store: JobStore, job_id: int, check: Callable[[JobInfo], bool], timeout: float = 120) -> JobInfo:
    """Poll the job row until `check` holds; fails the test with the row when it never does."""
    deadline = time.monotonic() + timeout
    while True:
        info = store.get(job_id)
        if check(info):
            return info
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} never reached the expected state: {info}")
        store.wait(job_id, timeout=0.05)


def kill(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def stop(process: subprocess.Popen[bytes]) -> str:
    """SIGTERM and wait: the worker finishes what it runs and exits; returns its stderr."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        _, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
    return err.decode(errors="replace")
