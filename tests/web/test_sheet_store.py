"""The character sheet lives in the store (issue 10): edited over real HTTP against `flenwheel serve` and by
the CLI, read by a worker on another host (another project folder on the same database), a sheet.yaml an
earlier release left imported on first read with nothing lost, and another user can neither read nor write
it — on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from flenwheel.config import Settings
from flenwheel.pipeline.sheet import load_sheet_config
from flenwheel.store.project import Project
from flenwheel.web.auth import add_user

from patience import HANG_S

FLENWHEEL = Path(sys.executable).parent / "flenwheel"


@dataclass
class Served:
    base: str
    alice: dict[str, str]
    bob: dict[str, str]
    env: dict[str, str]
    log: list[str]


@pytest.fixture
def served(any_project: Project) -> Iterator[Served]:
    """`flenwheel serve` (no job workers) over the project, on a free port, with users alice and bob."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLENWHEEL_")}
    env["PYTHONIOENCODING"] = "utf-8"
    env["FLENWHEEL_DATABASE_URL"] = any_project.settings.resolved_database_url()
    alice, bob = ({"Authorization": f"Bearer {add_user(any_project, name)[1]}"} for name in ("alice", "bob"))
    server = subprocess.Popen(
        [str(FLENWHEEL), "--project", str(any_project.root), "serve", "--port", "0", "--workers", "0"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stderr is not None
    log: list[str] = []
    for line in server.stderr:  # uvicorn says where it listens once the socket is bound
        log.append(line)
        if listening := re.search(r"Uvicorn running on (http://\S+)", line):
            break
    else:
        pytest.fail(f"flenwheel serve stopped before listening:\n{''.join(log)}")
    drain = threading.Thread(target=log.extend, args=(server.stderr,), daemon=True)
    drain.start()
    try:
        yield Served(listening.group(1), alice, bob, env, log)
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=HANG_S) == 0, "".join(log)
        drain.join(timeout=HANG_S)
        assert "Traceback" not in "".join(log), "".join(log)


def test_the_sheet_is_in_the_store_for_every_host_and_only_its_owner(
    served: Served, any_project: Project, tmp_path: Path
) -> None:
    # a worker's host: its own project folder (no characters/ of the API host's) on the same database
    other_root = tmp_path / "worker-host"
    other_root.mkdir()
    (other_root / "flenwheel.project").write_text("flenwheel project v1\n")
    worker = Project.open(Settings(project=other_root, database_url=served.env["FLENWHEEL_DATABASE_URL"]))
    with httpx.Client(base_url=served.base, timeout=HANG_S) as client:
        made = client.post(
            "/characters",
            json={"name": "lisa", "token": "ohwx_lisa", "class_word": "woman"},
            headers=served.alice,
        )
        assert made.status_code == 201, made.text
        lisa = made.json()["id"]
        sheet = f"/characters/{lisa}/sheet"

        # What an earlier release stored: the API host's characters/<id>/sheet.yaml
        legacy = any_project.root / "characters" / str(lisa) / "sheet.yaml"
        legacy.parent.mkdir(parents=True)
        kept = {"candidates": 3, "anchors": [{"id": "front", "prompt": "standing"}], "variations": []}
        legacy.write_text(yaml.safe_dump(kept))

        # bob can neither read nor write alice's sheet, and his requests do not touch it
        assert client.get(sheet, headers=served.bob).status_code == 404
        small = {"candidates": 2, "image": {"width": 64, "height": 64, "steps": 2}}
        assert client.put(sheet, json={"config": small}, headers=served.bob).status_code == 404
        assert yaml.safe_load(legacy.read_text()) == kept

        got = client.get(sheet, headers=served.alice)  # the first read imports the file into the store
        assert got.status_code == 200, got.text
        assert (got.json()["candidates"], [a["id"] for a in got.json()["anchors"]]) == (3, ["front"])
        assert (
            not legacy.exists()
            and yaml.safe_load(legacy.with_name("sheet.yaml.imported").read_text()) == kept
        )
        assert load_sheet_config(worker, f"#{lisa}").candidates == 3  # the other host reads the same sheet

        saved = client.put(sheet, json={"config": small}, headers=served.alice)
        assert saved.status_code == 200 and saved.json()["image"]["width"] == 64, saved.text
        on_worker = load_sheet_config(worker, f"#{lisa}")
        assert (on_worker.candidates, on_worker.image.width) == (2, 64)
        assert client.get(sheet, headers=served.alice).json() == saved.json()

        # the CLI on the worker's host stores a sheet the API then serves
        edited = tmp_path / "edited.yaml"
        edited.write_text(
            yaml.safe_dump({"candidates": 1, "anchors": [{"id": "side", "prompt": "x"}], "variations": []})
        )
        cli = subprocess.run(
            [str(FLENWHEEL), "--project", str(other_root), "sheet-config", f"#{lisa}", str(edited)],
            env=served.env,
            capture_output=True,
            text=True,
            timeout=HANG_S,
        )
        assert cli.returncode == 0, cli.stderr
        now = client.get(sheet, headers=served.alice).json()
        assert (now["candidates"], [a["id"] for a in now["anchors"]], now["variations"]) == (1, ["side"], [])

        bobs = client.post(
            "/characters",
            json={"name": "lisa", "token": "ohwx_lisa", "class_word": "woman"},
            headers=served.bob,
        ).json()["id"]
        assert (
            client.get(f"/characters/{bobs}/sheet", headers=served.bob).json()["candidates"] == 4
        )  # defaults
    worker.close()
