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

from patience import HANG_S

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


def wait_for(store: JobStore, job_id: int, check: Callable[[JobInfo], bool]) -> JobInfo:
    """Poll the job row until `check` holds, however long that takes on a busy machine; fails the test with
    the row when it has not after HANG_S (a hang) or when the job finished without it."""
    deadline = time.monotonic() + HANG_S
    while True:
        info = store.get(job_id)
        if check(info):
            return info
        if info.status.finished:
            raise AssertionError(f"job {job_id} finished without reaching the expected state: {info}")
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still not in the expected state after {HANG_S:.0f} s: {info}")
        store.wait(job_id, timeout=0.05)


def kill(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait()  # SIGKILL cannot be refused: it exits


def stop(process: subprocess.Popen[bytes]) -> str:
    """SIGTERM and wait: the worker finishes what it runs and exits; returns its stderr."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        _, err = process.communicate(timeout=HANG_S)
    except subprocess.TimeoutExpired:  # it hangs: kill it so its log can still be shown
        process.kill()
        _, err = process.communicate()
    return err.decode(errors="replace")
