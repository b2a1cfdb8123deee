"""Issue 5's "done when", as real processes: `flenwheel serve` plus separate `flenwheel worker`s, a
character's whole life driven through the HTTP API, a worker SIGKILLed while the chain trains, a new
worker started, and the chain finishing with no duplicate or lost assets; another user sees nothing.
On SQLite (embedded backend, one worker at a time) and on PostgreSQL (Procrastinate, two workers).

The built-in tiny model draws no faces: the base images, profile set and sheet are real images of the
pipeline but carry no identity, so the identity gate and the training set come from real photos of one
woman (tests/fixtures/faces, LISA) uploaded as references; evaluation says identity is not measurable.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from stack import Stack, environment, running_stack, submit, wait_job

from flenwheel.jobs.store import JobStore
from flenwheel.store.models import Asset, Character, Checkpoint, EvaluationSample, Job, TrainingRun
from flenwheel.store.project import Project
from flenwheel.web.auth import add_user

from patience import HANG_S
from photos import LISA

pytestmark = pytest.mark.slow  # a whole deployment: server, workers, a killed worker, training

TINY = {"width": 64, "height": 64, "steps": 2}
SPEC = {
    "age_range": "28-32",
    "gender_presentation": "woman",
    "hair_colour": "auburn",
    "hair_length": "shoulder-length",
    "eye_colour": "green",
    "distinguishing_features": ["freckles"],
}
SHEET = {  # two anchors, one candidate each, one variation each: the sheet's method at test size
    "candidates": 1,
    "identity_retries": 0,
    "image": TINY,
    "anchors": [
        {"id": "front", "prompt": "standing, facing the camera, full body", "keywords": ["front"]},
        {"id": "side", "prompt": "standing, side profile view, full body", "keywords": ["side"]},
    ],
    "variations": [
        {"id": "front_smile", "anchor": "front", "prompt": "smiling, same pose", "strength": 0.35},
        {"id": "side_walking", "anchor": "side", "prompt": "walking, mid-stride", "strength": 0.55},
    ],
}
PROMPTS = ["front-neutral", "profile_left-smiling"]
STRENGTHS = [0.8, 1.0]
CHAIN = {
    "training": {"resolution": 64, "rank": 4, "epochs": 2, "repeats": 2, "seed": 5},
    "evaluation": {"prompts": PROMPTS, "strengths": STRENGTHS, "size": 64},
}
STAGES = ["sheet", "gate", "dataset", "train", "evaluate", "activate"]


def asset_census(project: Project, character_id: int) -> Counter[tuple[str, str, str]]:
    """Assets by kind, stage and position/anchor/variation: what a duplicate or a loss would change."""
    with project.db.session() as session:
        rows = session.scalars(select(Asset).where(Asset.character_id == character_id)).all()
        return Counter(
            (
                row.kind,
                str(row.attributes.get("stage", "")),
                str(
                    row.attributes.get("variation")
                    or row.attributes.get("anchor")
                    or row.attributes.get("position")
                    or row.attributes.get("slot", "")
                ),
            )
            for row in rows
        )


def chain_jobs(client: httpx.Client, headers: dict[str, str], character_id: int) -> dict[str, dict[str, Any]]:
    page = client.get("/jobs", params={"character_id": character_id, "limit": 100}, headers=headers).json()
    return {
        job["kind"].removeprefix("chain_"): job for job in page["items"] if job["kind"].startswith("chain_")
    }


def live_chain(
    stack: Stack,
    project: Project,
    client: httpx.Client,
    headers: dict[str, str],
    character_id: int,
    kill_all: bool,
) -> dict[str, dict[str, Any]]:
    """Wait for the train stage to run, SIGKILL the worker running it (and, with `kill_all`, every worker),
    start a new worker, and wait for the whole chain."""
    store = JobStore(project.db)
    deadline = time.monotonic() + HANG_S  # only against a hang
    while True:
        jobs = chain_jobs(client, headers, character_id)
        train = jobs.get("train")
        if train is not None and train["status"] == "running":
            break
        failed = [j for j in jobs.values() if j["status"] in ("failed", "cancelled", "interrupted")]
        assert not failed and time.monotonic() < deadline, {
            s: (j["status"], j["error"]) for s, j in jobs.items()
        }
        time.sleep(0.05)
    running = store.get(train["id"])
    pid = int((running.worker or "").split(":")[1])
    for worker in list(stack.workers):
        if worker.poll() is None and (kill_all or worker.pid == pid):
            stack.kill(worker.pid)
    if kill_all:  # no worker is left to notice; a surviving one may have, after its own clock ran out
        assert store.get(train["id"]).status == "running"  # nobody has noticed yet
    stack.start_worker()  # the restarted worker
    deadline = time.monotonic() + HANG_S
    while True:
        jobs = chain_jobs(client, headers, character_id)
        if jobs.get("activate", {}).get("status") in ("succeeded", "failed"):
            return jobs
        failed = [j for j in jobs.values() if j["status"] in ("failed", "cancelled", "interrupted")]
        assert not failed and time.monotonic() < deadline, {
            s: (j["status"], j["error"]) for s, j in jobs.items()
        }
        wait_job(client, headers, max(j["id"] for j in jobs.values()))


@pytest.mark.parametrize(
    ("any_project", "procrastinate", "workers"),
    [("sqlite", False, 1), pytest.param("postgres", True, 2, marks=pytest.mark.postgres)],
    indirect=["any_project"],
)
def test_a_characters_whole_life_survives_a_killed_worker(
    any_project: Project, procrastinate: bool, workers: int
) -> None:
    project = any_project
    if procrastinate:
        from flenwheel.jobs.procrastinate_backend import ensure_schema

        ensure_schema(project)
    alice = {"Authorization": f"Bearer {add_user(project, 'alice')[1]}"}
    bob = {"Authorization": f"Bearer {add_user(project, 'bob')[1]}"}
    env = environment(project.db.url if project.settings.database_url else None, procrastinate)
    with (
        running_stack(project.root, env, workers) as stack,
        httpx.Client(base_url=stack.base, timeout=HANG_S) as client,
    ):
        created = client.post("/characters", json={"name": "mara", "spec": SPEC}, headers=alice)
        assert created.status_code == 201, created.text
        cid = created.json()["id"]
        assert client.get(f"/characters/{cid}/mode", headers=alice).json()["mode"] == "identity_reference"

        # base images: three in parallel, progress streamed as each lands
        base_job = submit(client, alice, cid, "base_images", {"count": 3, "size": TINY})
        base = wait_job(client, alice, base_job)
        assert base["status"] == "succeeded", (base["status"], base["error"])
        assert base["progress_total"] >= 3 and base["progress_done"] == base["progress_total"]
        assert len(base["result"]["asset_ids"]) == 3
        assert "no faces" in (base["result"]["note"] or "")  # the tiny model says it draws no faces
        bad = client.post(
            "/jobs",
            json={"kind": "base_images", "character_id": cid, "payload": {"count": 30}},
            headers=alice,
        )
        assert (
            bad.status_code == 422 and "count" in bad.json()["detail"]
        )  # refused at submit, naming the field

        picked = client.post(
            f"/characters/{cid}/pick-base", json={"asset_id": base["result"]["asset_ids"][1]}, headers=alice
        )
        assert picked.status_code == 200, picked.text
        skin = wait_job(client, alice, submit(client, alice, cid, "skin_pass", {"size": TINY}))
        assert skin["status"] == "succeeded", skin
        profile = wait_job(
            client, alice, submit(client, alice, cid, "profile_set", {"mode": "fast", "size": TINY})
        )
        assert profile["status"] == "succeeded", profile
        assert 7 <= len(profile["result"]["asset_ids"]) == profile["progress_total"] <= 10

        photos = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in LISA[:4]]
        uploaded = client.post(
            f"/characters/{cid}/assets", files=photos, data={"reference": "true"}, headers=alice
        )
        assert uploaded.status_code == 200 and uploaded.json()["added"] == 4, uploaded.text
        assert (
            client.put(f"/characters/{cid}/sheet", json={"config": SHEET}, headers=alice).status_code == 200
        )

        studio = {"prompt": "reading in a cafe", "size": TINY}
        early = wait_job(client, alice, submit(client, alice, cid, "studio_generate", studio))
        assert early["status"] == "succeeded" and early["result"]["mode"] == "identity_reference", early

        before = asset_census(project, cid)
        root = submit(client, alice, cid, "chain", {"options": CHAIN})
        jobs = live_chain(stack, project, client, alice, cid, kill_all=not procrastinate)

        assert [stage for stage in STAGES if stage in jobs] == STAGES, jobs
        assert all(jobs[s]["status"] == "succeeded" for s in STAGES), {s: jobs[s]["error"] for s in STAGES}
        assert jobs["train"]["attempts"] == 2  # killed once, finished by another worker
        assert jobs["evaluate"]["result"]["measured"] is False  # the tiny model draws no faces
        assert client.get(f"/jobs/{root}", headers=alice).json()["status"] == "succeeded"
        # Nothing could be measured, so the pick is recommended, not activated: the studio stays put and says why.
        recommended = jobs["activate"]["result"]
        assert recommended["decision"] == "recommended, not activated (not measurable)"
        mode = client.get(f"/characters/{cid}/mode", headers=alice).json()
        assert mode["mode"] == "identity_reference" and mode["checkpoint_id"] is None
        assert "pick was not measurable" in mode["reason"]
        stays = wait_job(client, alice, submit(client, alice, cid, "studio_generate", studio))
        assert stays["status"] == "succeeded" and stays["result"]["mode"] == "identity_reference", stays

        # The user decides to use it anyway.
        chosen = jobs["evaluate"]["result"]["selected_checkpoint"]
        activated = client.post(
            f"/characters/{cid}/activate",
            json={"checkpoint_id": chosen, "strength": recommended["recommended_strength"]},
            headers=alice,
        )
        assert activated.status_code == 200, activated.text
        assert activated.json()["reason"].endswith("activated by the user")
        assert (
            client.post(
                f"/characters/{cid}/activate", json={"checkpoint_id": chosen}, headers=bob
            ).status_code
            == 404
        )

        after = asset_census(project, cid)
        late = wait_job(client, alice, submit(client, alice, cid, "studio_generate", studio))
        assert late["status"] == "succeeded" and late["result"]["mode"] == "lora", late
        drawn = after - before
        assert after - drawn == before  # nothing that existed before the chain was lost
        assert all(n == 1 for key, n in after.items() if key[1] in ("anchor", "variation")), after
        assert {k[2] for k in drawn if k[1] == "anchor"} == {"front", "side"}
        assert {k[2] for k in drawn if k[1] == "variation"} == {"front_smile", "side_walking"}
        expected_samples = 2 * len(PROMPTS) * len(STRENGTHS)  # two checkpoints (epochs) × strengths × prompts
        with project.db.session() as session:
            assert len(session.scalars(select(TrainingRun)).all()) == 1
            assert len(session.scalars(select(Checkpoint)).all()) == 2
            samples = session.scalars(select(EvaluationSample)).all()
            cells = {(s.checkpoint_id, s.strength, s.prompt_key) for s in samples}
            assert len(samples) == len(cells) == expected_samples
            evaluation_assets = session.scalars(select(Asset).where(Asset.kind == "evaluation")).all()
            assert len(evaluation_assets) == expected_samples
            every = session.scalars(select(Asset)).all()
            assert all(project.blobs.exists(asset.sha256) for asset in every)  # no asset without its image
            assert all(
                job.status == "succeeded" for job in session.scalars(select(Job).where(Job.parent_id == root))
            )
            assert session.get_one(Character, cid).active_checkpoint_id is not None

        # bob sees nothing of alice's character
        assert client.get(f"/characters/{cid}", headers=bob).status_code == 404
        assert client.get(f"/characters/{cid}/assets", headers=bob).status_code == 404
        assert client.get(f"/characters/{cid}/mode", headers=bob).status_code == 404
        assert client.get(f"/assets/{base['result']['asset_ids'][0]}", headers=bob).status_code == 404
        assert client.get(f"/jobs/{root}", headers=bob).status_code == 404
        assert client.get(f"/jobs/{jobs['train']['id']}", headers=bob).status_code == 404
        assert client.get("/jobs", headers=bob).json()["total"] == 0
        assert submit_as(client, bob, cid) == 404


def submit_as(client: httpx.Client, headers: dict[str, str], character_id: int) -> int:
    response = client.post("/jobs", json={"kind": "curate", "character_id": character_id}, headers=headers)
    return response.status_code
