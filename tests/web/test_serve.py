"""`flenwheel serve` as a user runs it: the installed command on a free port, driven over real HTTP with
httpx through a character's life (upload, page, curate job with SSE, review, dataset, export)."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from webapi import read_events

from patience import HANG_S
from photos import LISA

FLENWHEEL = Path(sys.executable).parent / "flenwheel"


def _env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLENWHEEL_")}
    env["PYTHONIOENCODING"] = "utf-8"
    env["FLENWHEEL_TEST_KINDS"] = "1"  # the sleep kind drives the workers here
    return env


def _cli(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FLENWHEEL), "--project", str(project), *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=HANG_S,
        check=False,
    )


@dataclass
class Served:
    """A running `flenwheel serve`: its URL, two users' headers, the process and its log."""

    base: str
    alice: dict[str, str]
    bob: dict[str, str]
    project: Path
    process: subprocess.Popen[str]
    log: list[str]

    interrupted: bool = False

    def interrupt(self) -> None:
        """Ctrl-C, once (a second one would force uvicorn to quit without cleaning up)."""
        if not self.interrupted and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        self.interrupted = True

    def stop(self) -> int:
        """Stop as a user does and wait; returns the exit status."""
        self.interrupt()
        return self.process.wait(timeout=HANG_S)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """A project served on a free port with two embedded workers, and two users."""
    project = tmp_path / "project"
    assert _cli(project.parent, "init", str(project)).returncode == 0
    tokens = {}
    for name in ("alice", "bob"):
        made = _cli(project, "user", "add", name, "--json")
        assert made.returncode == 0, made.stderr
        tokens[name] = json.loads(made.stdout)["token"]
    server = subprocess.Popen(  # port 0: the system picks a free one and uvicorn says which
        [str(FLENWHEEL), "--project", str(project), "serve", "--port", "0", "--workers", "2"],
        env=_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    log: list[str] = []
    assert server.stderr is not None
    for line in server.stderr:  # uvicorn says where it listens once the socket is bound; no polling
        log.append(line)
        if listening := re.search(r"Uvicorn running on (http://\S+)", line):
            base = listening.group(1)
            break
    else:
        pytest.fail(f"flenwheel serve stopped before listening:\n{''.join(log)}")
    drain = threading.Thread(target=log.extend, args=(server.stderr,), daemon=True)  # a full pipe blocks it
    drain.start()
    bearer = {name: {"Authorization": f"Bearer {token}"} for name, token in tokens.items()}
    running = Served(base, bearer["alice"], bearer["bob"], project, server, log)
    try:
        yield running
    finally:
        assert running.stop() == 0, "".join(log)
        drain.join(timeout=HANG_S)  # the pipe ends when the server has exited
        assert "Traceback" not in "".join(log), "".join(log)


def _follow(client: httpx.Client, job_id: int, headers: dict[str, str]) -> list[tuple[str, dict]]:
    with client.stream("GET", f"/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return read_events(response.iter_lines())


def test_a_characters_life_over_http(served: Served) -> None:
    base, alice, bob = served.base, served.alice, served.bob
    with httpx.Client(base_url=base, timeout=HANG_S) as client:
        assert client.get("/openapi.json").json()["info"]["title"] == "flenwheel API"
        assert client.get("/health").json()["job_workers"] == 2
        assert client.get("/characters").status_code == 401

        created = client.post(
            "/characters", json={"name": "lisa", "token": "ohwx_lisa", "class_word": "woman"}, headers=alice
        )
        assert created.status_code == 201
        character_id = created.json()["id"]

        files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in LISA[4:7]]
        files.insert(1, ("files", ("notes.txt", b"not a photo", "text/plain")))
        uploaded = client.post(f"/characters/{character_id}/assets", files=files, headers=alice).json()
        assert [r["status"] for r in uploaded["results"]] == ["added", "rejected", "added", "added"]

        pages = []
        offset = 0
        while True:
            page = client.get(
                f"/characters/{character_id}/assets", params={"limit": 2, "offset": offset}, headers=alice
            ).json()
            pages.append([a["id"] for a in page["items"]])
            offset += 2
            if offset >= page["total"]:
                break
        assert [len(p) for p in pages] == [2, 1]

        curate = client.post(
            "/jobs", json={"kind": "curate", "character_id": character_id}, headers=alice
        ).json()
        events = _follow(client, curate["id"], alice)
        assert events[-1] == ("status", events[-1][1]) and events[-1][1]["status"] == "succeeded"
        totals = {data["progress_total"] for event, data in events if event == "progress"} - {0}
        assert totals == {3}  # one step per uploaded photo, never 0/0 once known

        for asset_id in (a for page in pages for a in page):
            labelled = client.post(f"/assets/{asset_id}/reviews", json={"label": "good"}, headers=alice)
            assert labelled.status_code == 201
        version = client.post(f"/characters/{character_id}/datasets", headers=alice)
        assert version.status_code == 201 and version.json()["images"] == 3
        export = client.get(f"/characters/{character_id}/datasets/1/export", headers=alice)
        assert "metadata.json" in zipfile.ZipFile(io.BytesIO(export.content)).namelist()

        sleep = client.post(
            "/jobs",
            json={"kind": "sleep", "character_id": character_id, "payload": {"steps": 3, "step_s": 0.05}},
            headers=alice,
        ).json()
        progress = [d["progress_done"] for e, d in _follow(client, sleep["id"], alice) if e == "progress"]
        assert progress[-1] == 3

        assert client.get(f"/characters/{character_id}", headers=bob).status_code == 404
        assert client.get(f"/jobs/{sleep['id']}/events", headers=bob).status_code == 404
        assert client.get("/jobs", headers=bob).json()["total"] == 0


def test_user_add_prints_the_token_once(tmp_path: Path) -> None:
    project = tmp_path / "project"
    _cli(tmp_path, "init", str(project))
    made = _cli(project, "user", "add", "alice")
    assert made.returncode == 0
    token = made.stdout.strip()
    assert len(token) >= 40
    listed = _cli(project, "user", "ls", "--json")
    assert json.loads(listed.stdout)[0]["name"] == "alice" and token not in listed.stdout
    assert token not in (project / "flenwheel.db").read_bytes().decode("latin-1")
    again = _cli(project, "user", "add", "alice")
    assert again.returncode != 0 and "already exists" in again.stderr + again.stdout


def test_stopping_the_server_ends_event_streams_and_hands_running_jobs_back(served: Served) -> None:
    with httpx.Client(base_url=served.base, timeout=HANG_S) as client:
        character = client.post(
            "/characters",
            json={"name": "lisa", "token": "ohwx_lisa", "class_word": "woman"},
            headers=served.alice,
        ).json()
        job = client.post(
            "/jobs",
            json={
                "kind": "sleep",
                "character_id": character["id"],
                "payload": {"steps": 10000, "step_s": 0.05},
            },
            headers=served.alice,
        ).json()
        with client.stream("GET", f"/jobs/{job['id']}/events", headers=served.alice) as stream:
            lines = stream.iter_lines()
            for line in lines:
                if line.startswith("data: ") and '"status": "running"' in line:
                    break
            served.interrupt()
            rest = list(lines)  # the stream ends by itself; the server does not wait on it
    assert any("server is stopping" in line for line in rest)
    assert served.stop() == 0
    listed = json.loads(_cli(served.project, "jobs", "ls", "--json").stdout)
    assert listed[0]["status"] == "queued" and listed[0]["attempts"] == 0  # runs again on the next start
