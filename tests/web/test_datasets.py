"""Dataset versions over the API: curate as a job, build, list with composition, export as a zip download."""

from __future__ import annotations

import io
import json
import zipfile

from webapi import Api, follow

from photos import LISA


def _curated_character(api: Api) -> int:
    character_id = api.character()
    api.upload(character_id, *LISA[4:7])
    job = api.client.post("/jobs", json={"kind": "curate", "character_id": character_id}, headers=api.alice)
    assert job.status_code == 202, job.text
    events = follow(api, job.json()["id"])
    assert events[-1][0] == "status" and events[-1][1]["status"] == "succeeded", events[-1]
    return character_id


def test_build_list_and_export(working_api: Api) -> None:
    api = working_api
    character_id = _curated_character(api)
    assets = api.client.get(f"/characters/{character_id}/assets", headers=api.alice).json()["items"]
    assert all(a["analysis"] is not None for a in assets)  # curate analysed every upload
    for asset in assets:
        api.client.post(f"/assets/{asset['id']}/reviews", json={"label": "good"}, headers=api.alice)
    url = f"/characters/{character_id}/datasets"
    built = api.client.post(url, headers=api.alice)
    assert built.status_code == 201, built.text
    version = built.json()
    assert (version["label"], version["images"], version["created"]) == ("v1", len(assets), True)
    assert version["composition"]["images"] == len(assets)
    assert {t["target"] for t in version["composition"]["targets"]} >= {"at least 10 images"}
    unchanged = api.client.post(url, headers=api.alice)
    assert unchanged.status_code == 200 and unchanged.json()["created"] is False
    listed = api.client.get(url, headers=api.alice).json()
    assert [v["label"] for v in listed] == ["v1"]
    detail = api.client.get(f"{url}/1", headers=api.alice).json()
    assert [item["asset_id"] for item in detail["items"]] == [a["id"] for a in assets]

    export = api.client.get(f"{url}/1/export", headers=api.alice)
    assert export.status_code == 200 and export.headers["content-type"] == "application/zip"
    assert "lisa_v1_zip.zip" in export.headers["content-disposition"]
    archive = zipfile.ZipFile(io.BytesIO(export.content))
    names = set(archive.namelist())
    assert {"metadata.json", "ohwx_lisa_001.jpg", "ohwx_lisa_001.txt"} <= names
    metadata = json.loads(archive.read("metadata.json"))
    assert metadata["dataset_version"] == "v1" and len(metadata["images"]) == len(assets)
    kohya = zipfile.ZipFile(
        io.BytesIO(api.client.get(f"{url}/1/export?format=kohya", headers=api.alice).content)
    )
    assert "dataset_config.toml" in kohya.namelist()
    assert api.client.get(f"{url}/2", headers=api.alice).status_code == 404
    assert api.client.get(f"{url}/1/export?format=tar", headers=api.alice).status_code == 422

    for path in (url, f"{url}/1", f"{url}/1/export"):
        assert api.client.get(path, headers=api.bob).status_code == 404, path
    assert api.client.post(url, headers=api.bob).status_code == 404


def test_building_with_nothing_labelled_good_says_how_to_fix_it(api: Api) -> None:
    character_id = api.character()
    response = api.client.post(f"/characters/{character_id}/datasets", headers=api.alice)
    assert response.status_code == 409
    assert "labelled good" in response.json()["detail"]
