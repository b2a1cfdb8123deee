"""Many users on one server (issue 10): what one user may do to another's work through the API. Each test
is a case of the issue, driven over HTTP as the hostile or careless user would."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import pytest
from webapi import Api, follow, make_api

from flenwheel.jobs.base import JobRequest
from flenwheel.jobs.store import JobStore
from flenwheel.pipeline.chain import chain_dataset
from flenwheel.store.project import Project
from flenwheel.store.run import RunContext

from patience import HANG_S
from photos import LISA

FLENWHEEL = Path(sys.executable).parent / "flenwheel"


def _post_job(api: Api, headers: dict[str, str], **body: object) -> tuple[int, dict]:
    response = api.client.post("/jobs", json=body, headers=headers)
    return response.status_code, response.json()


def test_chain_stages_cannot_be_submitted_or_grafted_onto_another_users_chain(api: Api) -> None:
    """Case 1: bob submits `chain_dataset` naming alice's chain as its root: refused; the stage kinds are
    not listed; and a stage whose own row is not a child of a chain of its character does nothing."""
    lisa = api.character("lisa")
    root = api.client.post(
        "/jobs", json={"kind": "chain", "character_id": lisa, "payload": {}}, headers=api.alice
    )
    assert root.status_code == 202, root.text
    root_id = root.json()["id"]
    bobs = api.character("bobs", api.bob)
    for kind in ("chain_dataset", "chain_train", "chain_activate"):
        code, answer = _post_job(api, api.bob, kind=kind, character_id=bobs, payload={"root": root_id})
        assert code == 422 and "kind" in answer["detail"], answer
    kinds = api.client.get("/jobs/kinds", headers=api.bob).json()
    assert "chain" in kinds and not [kind for kind in kinds if kind.startswith("chain_")]
    assert api.client.get("/jobs?kind=chain_dataset", headers=api.alice).json()["total"] == 0

    # A stage row made without the chain (e.g. by an older server) names alice's root: it is refused
    # before it builds anything or submits a next stage under her chain.
    store = JobStore(api.project.db)
    forged = store.submit(
        JobRequest(kind="chain_dataset", character_id=bobs, payload={"character": "bobs", "root": root_id})
    )
    ctx = RunContext(api.project.db, job_id=forged, character_id=bobs)
    with pytest.raises(Exception, match="not a stage of a background chain"):
        chain_dataset(api.project, {"character": f"#{bobs}", "root": root_id}, ctx)
    assert store.list_jobs(kind="chain_gate") == [] and store.list_jobs(kind="chain_train") == []


@pytest.fixture
def production_api(project: Project) -> Iterator[Api]:
    """A server as deployed: the test kinds are off."""
    yield from make_api(project, test_kinds=False)


def test_test_kinds_are_refused_and_unlisted_unless_enabled(production_api: Api) -> None:
    """Case 7: `sleep` and `noop` belong to the tests; a deployed server refuses them."""
    api = production_api
    lisa = api.character()
    for kind, payload in (("sleep", {"steps": 100_000, "step_s": 1}), ("noop", {})):
        code, answer = _post_job(api, api.alice, kind=kind, character_id=lisa, payload=payload)
        assert code == 422 and "kind" in answer["detail"], answer
    kinds = api.client.get("/jobs/kinds", headers=api.alice).json()
    assert "sleep" not in kinds and "noop" not in kinds and "curate" in kinds
    assert api.client.get("/jobs", headers=api.alice).json()["total"] == 0


def test_the_queue_follows_the_kind_and_priority_orders_only_your_own_jobs(api: Api) -> None:
    """Case 7: no user picks the queue or jumps ahead of other users (priority 0 or lower only)."""
    lisa = api.character()
    code, job = _post_job(
        api, api.alice, kind="generate", character_id=lisa, payload={"request": {"prompt": "x"}}
    )
    assert code == 202 and job["queue"] == "gpu"
    code, job = _post_job(api, api.alice, kind="curate", character_id=lisa)
    assert code == 202 and job["queue"] == "cpu" and job["priority"] == 0
    code, answer = _post_job(api, api.alice, kind="curate", character_id=lisa, queue="gpu")
    assert code == 422 and "queue" in answer["detail"]
    code, answer = _post_job(api, api.alice, kind="curate", character_id=lisa, priority=100)
    assert (
        code == 422
        and "priority" in answer["detail"]
        and "other users" in api.client.get("/openapi.json").text
    )
    code, job = _post_job(api, api.alice, kind="curate", character_id=lisa, priority=-10)
    assert code == 202 and job["priority"] == -10


def test_names_are_unique_per_user_and_a_409_reveals_nothing_of_others(api: Api) -> None:
    """Case 3: bob may call a character `lisa` although alice has one; each works on their own."""
    alices = api.character("lisa")
    bobs = api.character("lisa", api.bob)
    assert alices != bobs
    again = api.client.post(
        "/characters", json={"name": "lisa", "token": "ohwx_l", "class_word": "woman"}, headers=api.alice
    )
    assert again.status_code == 409
    # the pipeline behind the routes finds each user's own lisa, not the other's (or an ambiguity)
    api.upload(alices, LISA[0])
    assert api.client.get(f"/characters/{bobs}/assets", headers=api.bob).json()["total"] == 0
    built = api.client.post(f"/characters/{bobs}/datasets", headers=api.bob)
    assert built.status_code == 409 and "good" in built.json()["detail"], built.text
    code, job = _post_job(api, api.bob, kind="dataset_build", character_id=bobs)
    assert code == 202 and job["payload"]["character"] == f"#{bobs}"


def test_deleting_a_character_removes_its_files_and_nothing_passes_to_the_next_of_its_name(
    sqlite_api: Api,
) -> None:
    """Case 2: the sheet, training folders and unshared blobs go with the character; a new `lisa` (bob's)
    gets a new id, so none of the old files could be its own."""
    api = sqlite_api
    project = api.project
    lisa = api.character("lisa")
    uploaded = api.upload(lisa, LISA[0], LISA[1])
    shared = api.upload(api.character("marie"), LISA[1])  # the same bytes in another character
    sheet = {"config": {"image": {"width": 64, "height": 64, "steps": 2}, "candidates": 1}}
    assert api.client.put(f"/characters/{lisa}/sheet", json=sheet, headers=api.alice).status_code == 200
    assets = api.client.get(f"/characters/{lisa}/assets", headers=api.alice).json()["items"]
    blobs = {a["source_name"]: project.blobs.path(a["sha256"]) for a in assets}
    sheet_file = project.root / "characters" / str(lisa) / "sheet.yaml.imported"  # a legacy sheet, imported
    sheet_file.parent.mkdir(parents=True)
    sheet_file.write_text("candidates: 3\n")
    run_folder = project.root / "training" / str(lisa) / "run1"  # where a run of lisa's trains
    run_folder.mkdir(parents=True)
    (run_folder / "lisa-000001.safetensors").write_bytes(b"private")
    assert sheet_file.exists() and all(blob.exists() for blob in blobs.values())
    assert uploaded["added"] == 2 and shared["duplicates"] + shared["added"] == 1

    assert api.client.delete(f"/characters/{lisa}", headers=api.alice).status_code == 204
    assert not sheet_file.parent.exists() and not run_folder.parent.exists()
    assert not blobs[LISA[0].name].exists()  # only lisa used it
    assert blobs[LISA[1].name].exists()  # marie still uses it
    again = api.character("lisa", api.bob)
    assert again > lisa  # never the deleted character's id: no folder of it can be reused
    fresh = api.client.get(f"/characters/{again}/sheet", headers=api.bob).json()
    assert fresh["candidates"] == 4  # the defaults, not alice's sheet
    assert not (project.root / "characters" / str(again)).exists()


def test_a_revoked_user_gets_401_and_ls_shows_it(sqlite_api: Api) -> None:
    """Case 4: `flenwheel user revoke NAME`; `flenwheel user ls` says who is revoked."""
    api = sqlite_api
    bobs = api.character("bobs", api.bob)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(FLENWHEEL), "--project", str(api.project.root), "user", *args],
            capture_output=True,
            text=True,
            timeout=HANG_S,
        )

    revoked = cli("revoke", "bob")
    assert revoked.returncode == 0, revoked.stderr
    answer = api.client.get(f"/characters/{bobs}", headers=api.bob)
    assert answer.status_code == 401 and "revoked" in answer.json()["detail"]
    assert api.client.get("/characters", headers=api.alice).status_code == 200
    listed = {user["name"]: user for user in json.loads(cli("ls", "--json").stdout)}
    assert listed["bob"]["revoked_at"] is not None and listed["alice"]["revoked_at"] is None
    assert "revoked" in cli("ls").stdout
    missing = cli("revoke", "carol")
    assert missing.returncode != 0 and "no API user named 'carol'" in missing.stderr


def _strings(value: object) -> list[str]:
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return [value] if isinstance(value, str) else []


def test_job_results_give_asset_ids_and_api_urls_not_server_paths(working_api: Api) -> None:
    """Case 8: a stage's result named its images by their blob files (`"file": "/…/blobs/…"`)."""
    api = working_api
    created = api.client.post(
        "/characters",
        json={"name": "mara", "spec": {"gender_presentation": "woman", "age_range": "28-32"}},
        headers=api.alice,
    )
    assert created.status_code == 201, created.text
    size = {"width": 64, "height": 64, "steps": 2}
    code, job = _post_job(
        api,
        api.alice,
        kind="base_images",
        character_id=created.json()["id"],
        payload={"count": 1, "size": size},
    )
    assert code == 202, job
    assert follow(api, job["id"])[-1][1]["status"] == "succeeded"
    result = api.client.get(f"/jobs/{job['id']}", headers=api.alice).json()["result"]
    [candidate] = result["candidates"]
    image = candidate["image"]
    assert "file" not in image and image["image_url"] == f"/assets/{image['asset_id']}/image"
    root = str(api.project.root.resolve())
    assert not [s for s in _strings(result) if s.startswith("/") and not s.startswith("/assets/")], result
    assert not [s for s in _strings(result) if root in s]
    fetched = api.client.get(image["image_url"], headers=api.alice)
    assert fetched.status_code == 200 and fetched.content.startswith(b"\x89PNG")


@pytest.fixture
def working_any_api(any_project: Project) -> Iterator[Api]:
    """The API with two embedded job workers, on SQLite and on PostgreSQL."""
    yield from make_api(any_project, job_workers=2)


def test_parallel_dataset_builds_all_answer_with_one_version(working_any_api: Api) -> None:
    """Case 10: ten parallel POST /characters/{id}/datasets gave IntegrityErrors (500) on PostgreSQL."""
    api = working_any_api
    lisa = api.character()
    api.upload(lisa, *LISA[4:7])
    curate = api.client.post("/jobs", json={"kind": "curate", "character_id": lisa}, headers=api.alice)
    assert follow(api, curate.json()["id"])[-1][1]["status"] == "succeeded"
    for asset in api.client.get(f"/characters/{lisa}/assets", headers=api.alice).json()["items"]:
        labelled = api.client.post(
            f"/assets/{asset['id']}/reviews", json={"label": "good"}, headers=api.alice
        )
        assert labelled.status_code == 201, labelled.text

    def build(_: int) -> tuple[int, int]:
        response = api.client.post(f"/characters/{lisa}/datasets", headers=api.alice)
        return response.status_code, response.json().get("number", -1)

    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(build, range(10)))
    assert sorted(code for code, _ in answers) == [200] * 9 + [201], answers
    assert {number for _, number in answers} == {1}  # the same content is the same version
    versions = api.client.get(f"/characters/{lisa}/datasets", headers=api.alice).json()
    assert [v["number"] for v in versions] == [1]


def test_event_followers_hold_no_database_connection_and_are_capped_per_user(api: Api) -> None:
    """Case 9: each follower held a connection for the job's whole life, so sixteen followers took the
    whole pool and every other request waited for it. Now two users' eight streams each leave the API
    answering, and a ninth stream of one user is a 429 that says why."""
    alices_job = _post_job(api, api.alice, kind="noop", character_id=api.character())[1]["id"]
    bobs_job = _post_job(api, api.bob, kind="noop", character_id=api.character("bobs", api.bob))[1]["id"]
    with ExitStack() as streams:
        for job_id, headers in [(alices_job, api.alice)] * 8 + [(bobs_job, api.bob)] * 8:
            stream = streams.enter_context(
                api.client.stream("GET", f"/jobs/{job_id}/events", headers=headers)
            )
            assert stream.status_code == 200
        listed = api.client.get("/characters", headers=api.alice)
        assert listed.status_code == 200 and listed.json()["total"] == 1
        assert api.client.get(f"/jobs/{bobs_job}", headers=api.bob).json()["status"] == "queued"
        ninth = api.client.get(f"/jobs/{alices_job}/events", headers=api.alice)
        assert ninth.status_code == 429 and "close one" in ninth.json()["detail"]
    with api.client.stream("GET", f"/jobs/{alices_job}/events", headers=api.alice) as again:
        assert again.status_code == 200  # closed streams gave their slots back
