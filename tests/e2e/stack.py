"""A real deployment on this machine: `flenwheel serve` (no in-process workers) and separate
`flenwheel worker` processes on one project, on SQLite (embedded backend) or PostgreSQL (Procrastinate).
Used by the end-to-end tests and by bench/pipeline.py."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

FLENWHEEL = Path(sys.executable).parent / "flenwheel"
TERMINAL = {"succeeded", "failed", "cancelled", "interrupted"}
# Only against a hang, as tests/patience.py (not imported: bench/pipeline.py loads this file on its own).
HANG_S = 1800.0


def environment(database_url: str | None, procrastinate: bool) -> dict[str, str]:
    """The settings every process of the deployment shares (a real deployment puts them in its env)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLENWHEEL_")}
    env.update(
        {
            "PYTHONIOENCODING": "utf-8",
            "FLENWHEEL_JOB_RETRY_BACKOFF_S": "0",
            # a killed worker is noticed in seconds; a live one starved of CPU (heartbeats every 2.5 s) is not
            # taken for dead
            "FLENWHEEL_JOB_STALE_AFTER_S": "10",
        }
    )
    if database_url:
        env["FLENWHEEL_DATABASE_URL"] = database_url
    if procrastinate:
        env["FLENWHEEL_JOBS"] = "procrastinate"
    return env


@dataclass
class Stack:
    """The server's URL, the project, and the worker processes (killable one by one)."""

    project: Path
    env: dict[str, str]
    base: str = ""
    server: subprocess.Popen[str] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    def start_server(self) -> None:
        self.server = subprocess.Popen(  # port 0: uvicorn reports the port it bound
            [str(FLENWHEEL), "--project", str(self.project), "serve", "--port", "0", "--workers", "0"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.server.stderr is not None
        for line in self.server.stderr:
            self.log.append(line)
            if listening := re.search(r"Uvicorn running on (http://\S+)", line):
                self.base = listening.group(1)
                break
        else:
            raise AssertionError("flenwheel serve stopped before listening:\n" + "".join(self.log))
        threading.Thread(target=self.log.extend, args=(self.server.stderr,), daemon=True).start()

    def start_worker(self, concurrency: int = 2) -> subprocess.Popen[bytes]:
        worker = subprocess.Popen(
            [str(FLENWHEEL), "--project", str(self.project), "worker", "--concurrency", str(concurrency)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.workers.append(worker)
        return worker

    def kill(self, pid: int) -> None:
        """SIGKILL one worker: no clean-up, its running job stays `running` until someone notices."""
        [victim] = [w for w in self.workers if w.pid == pid]
        victim.send_signal(signal.SIGKILL)
        victim.wait()  # SIGKILL cannot be refused: it exits

    def stop(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.wait(timeout=HANG_S)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGINT)
            try:
                self.server.wait(timeout=HANG_S)
            except subprocess.TimeoutExpired:
                self.server.kill()


@contextmanager
def running_stack(project: Path, env: dict[str, str], workers: int, concurrency: int = 2) -> Iterator[Stack]:
    stack = Stack(project, env)
    try:
        stack.start_server()
        for _ in range(workers):
            stack.start_worker(concurrency)
        yield stack
    finally:
        stack.stop()


def follow(client: httpx.Client, job_id: int, headers: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """Every Server-Sent Event of the job, with the client's clock, until the server ends the stream."""
    events: list[tuple[str, dict[str, Any]]] = []
    event, data = "message", ""
    with client.stream("GET", f"/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: "):
                data += line[len("data: ") :]
            elif line == "" and data:
                events.append((event, {**json.loads(data), "heard_at": time.monotonic()}))
                event, data = "message", ""
    return events


def submit(
    client: httpx.Client, headers: dict[str, str], character_id: int, kind: str, payload: dict[str, Any]
) -> int:
    response = client.post(
        "/jobs", json={"kind": kind, "character_id": character_id, "payload": payload}, headers=headers
    )
    assert response.status_code == 202, response.text
    return int(response.json()["id"])


def wait_job(client: httpx.Client, headers: dict[str, str], job_id: int) -> dict[str, Any]:
    """Follow the job's events to the end and return the finished job, however long it takes on a busy
    machine; fails if it is still unfinished after HANG_S (a hang)."""
    deadline = time.monotonic() + HANG_S
    while True:
        follow(client, job_id, headers)  # ends when the job finishes (or the server asks to reconnect)
        job: dict[str, Any] = client.get(f"/jobs/{job_id}", headers=headers).json()
        if job["status"] in TERMINAL:
            return job
        assert time.monotonic() < deadline, (
            f"job {job_id} is still {job['status']} after {HANG_S:.0f} s: {job}"
        )
