"""Typed job payloads (issue 10 cases 5 and 6): what careless and hostile users send is refused at submit
with a 422 naming the field, before a worker sees it; files over the API are an allow-list."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from webapi import Api

from flenwheel.characters import create_character
from flenwheel.store.project import Project

from patience import HANG_S

FLENWHEEL = Path(sys.executable).parent / "flenwheel"
BAD_PAYLOADS = [  # kind, payload, the field the 422 must name
    ("base_images", {"count": 1000}, "count"),
    ("base_images", {"size": {"width": 100_000, "height": 64}}, "width"),
    ("studio_generate", {"prompt": "x" * 1_000_000}, "prompt"),
    ("studio_generate", {"prompt": "a cafe", "tier": "ultra"}, "tier"),
    ("studio_generate", {"prompt": "a cafe", "colour": "red"}, "colour"),
    ("curate", {"identity_threshold": "abc"}, "identity_threshold"),
    ("curate", {"review_threshold": 5}, "review_threshold"),
    ("chain", {"options": {"training": {"epochs": 100_000}}}, "epochs"),
    ("chain", {"options": {"evaluation": {"strengths": [1.0] * 100}}}, "strengths"),
    ("chain", {"options": {"sheet": {"x": 1}}}, "sheet"),
    ("train", {"training": {"rank": 100_000}}, "rank"),
    ("evaluate", {"steps": 1_000_000}, "steps"),
    ("generate", {"request": {"width": 100_000}}, "width"),
    ("generate", {"request": {"prompt": "x", "steps": "many"}}, "steps"),
    ("generate", {"request": {"prompt": "x", "tier": "ultra"}}, "tier"),
    ("redraw_variation", {"variation": ""}, "variation"),
    ("regenerate_position", {"position": "cafe", "tweak": "x" * 301}, "tweak"),
    ("studio_generate", {"prompt": "a cafe", "provider": "../etc"}, "provider"),
    ("dataset_build", {"version": 3}, "version"),
    ("enrich", {"per_source": 10_000}, "per_source"),
    ("pick_base", {}, "asset_id"),
]


@pytest.mark.parametrize(("kind", "payload", "field"), BAD_PAYLOADS)
def test_bad_payloads_are_422s_naming_the_field(
    sqlite_api: Api, kind: str, payload: dict, field: str
) -> None:
    api = sqlite_api
    lisa = api.character()
    response = api.client.post(
        "/jobs", json={"kind": kind, "character_id": lisa, "payload": payload}, headers=api.alice
    )
    assert response.status_code == 422, response.text
    answer = response.json()
    assert any(field in error["loc"] for error in answer["errors"]), answer
    assert field in answer["detail"]
    assert api.client.get("/jobs", headers=api.alice).json()["total"] == 0  # nothing was queued


def test_good_payloads_are_queued_as_given(sqlite_api: Api) -> None:
    api = sqlite_api
    lisa = api.character()
    options = {
        "skip": ["sheet"],
        "training": {"epochs": 2, "resolution": 64},
        "evaluation": {"prompts": "quick"},
    }
    response = api.client.post(
        "/jobs",
        json={"kind": "chain", "character_id": lisa, "payload": {"options": options}},
        headers=api.alice,
    )
    assert response.status_code == 202, response.text
    assert response.json()["payload"] == {"character": f"#{lisa}", "options": options}


def test_the_openapi_document_has_every_kinds_payload(sqlite_api: Api) -> None:
    document = sqlite_api.client.get("/openapi.json").json()
    body = document["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    kinds = sqlite_api.client.get("/jobs/kinds", headers=sqlite_api.alice).json()
    assert body["discriminator"]["propertyName"] == "kind" and set(body["discriminator"]["mapping"]) == set(
        kinds
    )
    schemas = document["components"]["schemas"]
    training = schemas["TrainingOptions"]["properties"]
    assert training["epochs"]["anyOf"][0]["maximum"] == 100
    assert schemas["ChainOptions"]["additionalProperties"] is False


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("base_model", "/etc"),
        ("base_model", "/etc/passwd"),
        ("base_model", "flenwheel.db"),
        ("base_model", "blobs/ab/abcdef"),
        ("base_model", "file:///etc/passwd"),
        ("base_model", "http://169.254.169.254/latest"),
        ("base_model", "checkpoint:1"),  # not one of the caller's
    ],
)
def test_files_over_the_api_are_an_allow_list(sqlite_api: Api, where: str, value: str) -> None:
    """Case 6: `training.base_model` (and every file-like field) is never a path on the server."""
    api = sqlite_api
    lisa = api.character()
    for kind, payload, loc in (
        (
            "chain",
            {"options": {"training": {where: value}}},
            ["body", "payload", "options", "training", where],
        ),
        ("train", {"training": {where: value}}, ["body", "payload", "training", where]),
    ):
        response = api.client.post(
            "/jobs", json={"kind": kind, "character_id": lisa, "payload": payload}, headers=api.alice
        )
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["loc"] == loc
        assert "https URL" in response.json()["detail"] or "your checkpoints" in response.json()["detail"]


def test_https_urls_and_the_built_in_model_are_accepted(sqlite_api: Api) -> None:
    api = sqlite_api
    lisa = api.character()
    for value in ("tiny", "https://huggingface.co/some/model.safetensors"):
        payload = {"options": {"training": {"base_model": value}}}
        response = api.client.post(
            "/jobs", json={"kind": "chain", "character_id": lisa, "payload": payload}, headers=api.alice
        )
        assert response.status_code == 202, response.text
    lora = {"request": {"prompt": "x", "loras": [{"path": "evaluations/lora.safetensors"}]}}
    response = api.client.post(
        "/jobs", json={"kind": "generate", "character_id": lisa, "payload": lora}, headers=api.alice
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "payload", "request", "loras", 0, "path"]


def test_the_sheet_is_bounded(sqlite_api: Api) -> None:
    """Case 5: PUT /characters/{id}/sheet with 1000000² images or 1e9 steps is a 422 naming the field."""
    api = sqlite_api
    lisa = api.character()
    for image, field in (({"width": 1_000_000, "height": 1_000_000}, "width"), ({"steps": 10**9}, "steps")):
        response = api.client.put(
            f"/characters/{lisa}/sheet", json={"config": {"image": image}}, headers=api.alice
        )
        assert response.status_code == 422, response.text
        assert field in response.json()["errors"][0]["loc"]
    fine = api.client.put(
        f"/characters/{lisa}/sheet",
        json={"config": {"image": {"width": 64, "height": 64, "steps": 2}}},
        headers=api.alice,
    )
    assert fine.status_code == 200 and fine.json()["image"]["width"] == 64


def test_the_cli_checks_payloads_with_the_same_models(project: Project) -> None:
    """`flenwheel jobs submit` refuses what the API refuses (the chain's stages, a bad field); its user owns
    the machine, so local paths stay allowed there."""
    create_character(project, "lisa", "ohwx", "woman")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(FLENWHEEL), "--project", str(project.root), "jobs", "submit", *args],
            capture_output=True,
            text=True,
            timeout=HANG_S,
        )

    bad = cli("base_images", "--payload", json.dumps({"character": "lisa", "count": 1000}))
    assert bad.returncode != 0 and "count" in bad.stderr
    stage = cli("chain_dataset", "--payload", json.dumps({"character": "lisa", "root": 1}))
    assert stage.returncode != 0 and "submit `chain`" in stage.stderr
    local = {"character": "lisa", "options": {"training": {"base_model": "/models/sd15", "epochs": 1}}}
    queued = cli("chain", "--payload", json.dumps(local), "--json")
    assert queued.returncode == 0, queued.stderr
    assert json.loads(queued.stdout)["queue"] == "cpu"
