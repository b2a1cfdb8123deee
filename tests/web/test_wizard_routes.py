"""The wizard's quick calls over the API: pick the base, pick an anchor, edit the sheet, read the studio's
mode; wrong picks and bad sheets are explained, and another user's character answers 404."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml
from webapi import Api, make_api

from flenwheel.pipeline.sheet import sheet_path
from flenwheel.store.project import Project

from photos import LISA


@pytest.fixture
def api(project: Project) -> Iterator[Api]:
    yield from make_api(project)


def test_picks_sheet_and_mode(api: Api) -> None:
    character_id = api.character()
    photo = api.upload(character_id, LISA[0])["results"][0]["asset_id"]
    client, alice = api.client, api.alice

    wrong = client.post(f"/characters/{character_id}/pick-base", json={"asset_id": photo}, headers=alice)
    assert wrong.status_code == 400 and "not a base image" in wrong.json()["detail"]
    anchor = client.post(
        f"/characters/{character_id}/anchors/pick",
        json={"anchor": "nowhere", "asset_id": photo},
        headers=alice,
    )
    assert anchor.status_code == 400 and "nowhere" in anchor.json()["detail"]

    bad = client.put(f"/characters/{character_id}/sheet", json={"config": {"candidates": 99}}, headers=alice)
    assert bad.status_code == 422 and "candidates" in bad.json()["detail"]
    sheet = {"candidates": 2, "image": {"width": 64, "height": 64, "steps": 2}}
    saved = client.put(f"/characters/{character_id}/sheet", json={"config": sheet}, headers=alice)
    assert saved.status_code == 200 and saved.json()["candidates"] == 2
    assert yaml.safe_load(sheet_path(api.project, "lisa").read_text())["image"]["width"] == 64

    mode = client.get(f"/characters/{character_id}/mode", headers=alice).json()
    assert mode["mode"] == "identity_reference" and mode["checkpoint_id"] is None

    for method, path, body in (
        ("POST", "pick-base", {"asset_id": photo}),
        ("POST", "anchors/pick", {"anchor": "front", "asset_id": photo}),
        ("PUT", "sheet", {"config": sheet}),
        ("GET", "mode", None),
    ):
        response = client.request(method, f"/characters/{character_id}/{path}", json=body, headers=api.bob)
        assert response.status_code == 404, (path, response.text)
