"""A test client for the API over a project, with two users (alice and bob) and small helpers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fastapi.testclient import TestClient

from flenwheel.store.project import Project
from flenwheel.web.app import create_app
from flenwheel.web.auth import add_user


@dataclass
class Api:
    """A running app (TestClient) and the project under it, with users alice and bob."""

    client: TestClient
    project: Project
    alice: dict[str, str]
    bob: dict[str, str]

    def character(self, name: str = "lisa", headers: dict[str, str] | None = None) -> int:
        response = self.client.post(
            "/characters",
            json={"name": name, "token": f"ohwx_{name}", "class_word": "woman"},
            headers=headers or self.alice,
        )
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    def upload(self, character_id: int, *paths: Path, headers: dict[str, str] | None = None) -> dict:
        files = [("files", (path.name, path.read_bytes(), "image/jpeg")) for path in paths]
        response = self.client.post(
            f"/characters/{character_id}/assets", files=files, headers=headers or self.alice
        )
        assert response.status_code == 200, response.text
        return response.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_api(
    project: Project, job_workers: int = 0, raise_server_exceptions: bool = True, **settings: object
) -> Iterator[Api]:
    alice = bearer(add_user(project, "alice")[1])
    bob = bearer(add_user(project, "bob")[1])
    app = create_app(project.settings.model_copy(update=settings), job_workers=job_workers)
    with TestClient(app, raise_server_exceptions=raise_server_exceptions) as client:
        yield Api(client, project, alice, bob)


def read_events(lines: Iterator[str]) -> list[tuple[str, dict]]:
    """Parse a Server-Sent Events stream into (event, data) pairs, to its end."""
    events: list[tuple[str, dict]] = []
    event, data = "message", ""
    for line in lines:
        if line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: "):
            data += line[len("data: ") :]
        elif line == "" and data:
            events.append((event, json.loads(data)))
            event, data = "message", ""
    return events


def follow(api: Api, job_id: int, headers: dict[str, str] | None = None) -> list[tuple[str, dict]]:
    """Every event of the job's progress stream, until the server ends it (the job has finished)."""
    with api.client.stream("GET", f"/jobs/{job_id}/events", headers=headers or api.alice) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return read_events(response.iter_lines())
