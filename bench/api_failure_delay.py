"""How fast an API client hears that a job failed (seed 003 AC3: < 3 s; aim < 0.2 s), through `flenwheel serve`.

    .venv/bin/python bench/api_failure_delay.py [--runs 30]

Starts `flenwheel serve --workers 2` on a fresh SQLite project and a free port. Each run submits a `sleep` job
whose stage raises at once and reads `GET /jobs/{id}/events` until the `failed` status event arrives.
Reported: the job row's `finished_at` → the event at the client (the SSE poll interval plus transport), and
POST /jobs → the event (adds delivery to a worker and the failing stage).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

FLENWHEEL = Path(sys.executable).parent / "flenwheel"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLENWHEEL_")}
    env["FLENWHEEL_TEST_KINDS"] = "1"  # the `sleep` kind is refused unless the server enables test kinds
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "project"
        subprocess.run([str(FLENWHEEL), "init", str(project)], env=env, check=True, capture_output=True)
        made = subprocess.run(
            [str(FLENWHEEL), "-p", str(project), "user", "add", "bench", "--json"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        headers = {"Authorization": f"Bearer {json.loads(made.stdout)['token']}"}
        server = subprocess.Popen(  # port 0: uvicorn reports the port it was given
            [str(FLENWHEEL), "-p", str(project), "serve", "--port", "0", "--workers", "2"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert server.stderr is not None
        base = ""
        for line in server.stderr:
            if listening := re.search(r"Uvicorn running on (http://\S+)", line):
                base = listening.group(1)
                break
        # Keep reading the server's log so a full pipe never blocks it.
        threading.Thread(target=server.stderr.read, daemon=True).start()
        try:
            measure(base, headers, args.runs)
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=60)


def measure(base: str, headers: dict[str, str], runs: int, setup: str = "SQLite, 2 embedded workers") -> None:
    after_failure: list[float] = []
    after_submit: list[float] = []
    with httpx.Client(base_url=base, timeout=30) as client:
        character = client.post(
            "/characters",
            json={"name": "bench", "token": "ohwx_bench", "class_word": "woman"},
            headers=headers,
        ).json()
        for _ in range(runs):
            submitted = time.time()
            job = client.post(
                "/jobs",
                json={"kind": "sleep", "character_id": character["id"], "payload": {"fail": "engine down"}},
                headers=headers,
            ).json()
            heard = None
            with client.stream("GET", f"/jobs/{job['id']}/events", headers=headers) as stream:
                for line in stream.iter_lines():
                    if line.startswith("data: ") and json.loads(line[6:])["status"] == "failed":
                        heard = time.time()
                        break
            assert heard is not None, "the stream ended without a failed event"
            finished = datetime.fromisoformat(
                client.get(f"/jobs/{job['id']}", headers=headers).json()["finished_at"]
            )
            finished = finished if finished.tzinfo else finished.replace(tzinfo=UTC)
            after_failure.append(heard - finished.timestamp())
            after_submit.append(heard - submitted)
    print(f"{runs} failing jobs through flenwheel serve ({setup})")
    print("                              p50      p90      max")
    for label, values in (
        ("job failed -> SSE event", after_failure),
        ("POST /jobs -> SSE event", after_submit),
    ):
        row = [statistics.median(values), percentile(values, 0.9), max(values)]
        print(f"{label:<26}" + "".join(f"{v * 1000:7.0f} ms" for v in row))


if __name__ == "__main__":
    main()
