"""How fast a failing stage shows up as `failed` (seed 003: < 3 s; aim < 0.2 s), on both job backends.

    .venv/bin/python bench/job_failure_delay.py [--runs 20] [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/test]

Each run submits a `sleep` job whose stage raises at once, then polls the row every 2 ms. Reported: claim →
`failed` visible (the stage runs and fails in between) and submit → `failed` visible (adds delivery to a
worker). Embedded: SQLite, a pool of 2 threads in this process. Procrastinate: a fresh PostgreSQL database
and one `flenwheel worker` process (FLENWHEEL_JOBS=procrastinate).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine

from flenwheel.config import Settings
from flenwheel.jobs.base import JobRequest, JobStatus
from flenwheel.jobs.embedded import EmbeddedBackend
from flenwheel.jobs.procrastinate_backend import ProcrastinateBackend
from flenwheel.jobs.store import JobStore
from flenwheel.store.project import Project

FAILING = JobRequest(kind="sleep", payload={"fail": "the engine refused the request"})


def measure(store: JobStore, submit: object, runs: int) -> tuple[list[float], list[float]]:
    claim_to_failed, submit_to_failed = [], []
    for _ in range(runs):
        submitted = datetime.now(UTC)
        job_id = submit(FAILING)  # type: ignore[operator]
        while (job := store.get(job_id)).status != JobStatus.FAILED:
            time.sleep(0.002)
        seen = datetime.now(UTC)
        assert job.started_at is not None
        started = job.started_at if job.started_at.tzinfo else job.started_at.replace(tzinfo=UTC)
        claim_to_failed.append((seen - started).total_seconds())
        submit_to_failed.append((seen - submitted).total_seconds())
    return claim_to_failed, submit_to_failed


def report(name: str, claim: list[float], total: list[float]) -> None:
    def ms(values: list[float]) -> str:
        return f"median {statistics.median(values) * 1000:6.1f} ms, max {max(values) * 1000:6.1f} ms"

    print(f"{name:14s} claim→failed {ms(claim)} | submit→failed {ms(total)}  ({len(claim)} runs)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = Project.init(Settings(project=Path(tmp) / "sqlite"))
        with EmbeddedBackend(project, workers=2) as pool:
            report("embedded", *measure(pool.store, pool.submit, args.runs))
        project.close()

        admin = create_engine(args.postgres, isolation_level="AUTOCOMMIT")
        name = f"flenwheel_bench_{uuid.uuid4().hex[:8]}"
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        url = args.postgres.rsplit("/", 1)[0] + f"/{name}"
        try:
            project = Project.init(Settings(project=Path(tmp) / "pg", database_url=url, jobs="procrastinate"))
            backend = ProcrastinateBackend(project)
            backend.submit(JobRequest(kind="noop"))  # applies the schema before the worker starts
            env = {k: v for k, v in os.environ.items() if not k.startswith("FLENWHEEL_")}
            env.update(FLENWHEEL_DATABASE_URL=url, FLENWHEEL_JOBS="procrastinate")
            flenwheel = Path(sys.executable).parent / "flenwheel"
            worker = subprocess.Popen(
                [str(flenwheel), "--project", str(project.root), "worker"], env=env, stderr=subprocess.DEVNULL
            )
            try:
                backend.wait(1, timeout=60)  # the worker is up once the noop has run
                report("procrastinate", *measure(backend.store, backend.submit, args.runs))
            finally:
                worker.terminate()
                worker.wait(60)
                backend.close()
                project.close()
        finally:
            with admin.connect() as connection:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
