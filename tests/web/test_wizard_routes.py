"""The wizard's quick calls over the API: pick the base, pick an anchor, edit the sheet, read the studio's
mode, activate and deactivate a LoRA as the user; wrong picks and bad sheets are explained, and another user's
character or checkpoint answers 404."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from webapi import Api, make_api

from flenwheel.pipeline.sheet import load_sheet_config
from flenwheel.store.models import DatasetVersion
from flenwheel.store.project import Project, get_character

from checkpoint_runs import add_run
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
    assert load_sheet_config(api.project, f"#{character_id}").image.width == 64
    got = client.get(f"/characters/{character_id}/sheet", headers=alice)
    assert got.status_code == 200 and got.json() == saved.json()

    mode = client.get(f"/characters/{character_id}/mode", headers=alice).json()
    assert mode["mode"] == "identity_reference" and mode["checkpoint_id"] is None
    assert mode["reason"].startswith("identity_reference: no LoRA is active yet")

    for method, path, body in (
        ("POST", "pick-base", {"asset_id": photo}),
        ("POST", "anchors/pick", {"anchor": "front", "asset_id": photo}),
        ("PUT", "sheet", {"config": sheet}),
        ("GET", "sheet", None),
        ("GET", "mode", None),
        ("POST", "activate", {"checkpoint_id": 1}),
        ("DELETE", "activate", None),
    ):
        response = client.request(method, f"/characters/{character_id}/{path}", json=body, headers=api.bob)
        assert response.status_code == 404, (path, response.text)


def with_run(project: Project, name: str, checkpoints: list[tuple[str, bytes]]) -> tuple[int, list[int]]:
    """A finished run of `name` with checkpoint files, recorded through the store as a trainer would."""
    with project.db.session() as session:
        session.add(DatasetVersion(character_id=get_character(session, name).id, number=1))
    return add_run(project, name, checkpoints)


def test_the_user_activates_and_deactivates_a_lora(api: Api) -> None:
    client, alice, bob = api.client, api.alice, api.bob
    lisa = api.character("lisa")
    bobs = api.character("bobby", headers=bob)
    run_id, (epoch1, epoch2) = with_run(api.project, "lisa", [("epoch1", b"one"), ("epoch2", b"two")])
    _, (bobs_checkpoint,) = with_run(api.project, "bobby", [("b1", b"three")])

    on = client.post(
        f"/characters/{lisa}/activate", json={"checkpoint_id": epoch2, "strength": 0.8}, headers=alice
    )
    assert on.status_code == 200, on.text
    assert on.json() == {
        "mode": "lora",
        "reason": f"lora: checkpoint {epoch2} (run {run_id}, step 200, epoch 2) at strength 0.8, "
        "activated by the user",
        "checkpoint_id": epoch2,
        "strength": 0.8,
    }
    assert client.get(f"/characters/{lisa}/mode", headers=alice).json() == on.json()

    # Another user's checkpoint, or a checkpoint for another user's character, is answered 404.
    theirs = client.post(
        f"/characters/{lisa}/activate", json={"checkpoint_id": bobs_checkpoint}, headers=alice
    )
    assert theirs.status_code == 404 and f"has no checkpoint {bobs_checkpoint}" in theirs.json()["detail"]
    mine = client.post(f"/characters/{bobs}/activate", json={"checkpoint_id": bobs_checkpoint}, headers=alice)
    assert mine.status_code == 404
    too_strong = client.post(
        f"/characters/{lisa}/activate", json={"checkpoint_id": epoch1, "strength": 9}, headers=alice
    )
    assert too_strong.status_code == 422 and "strength" in too_strong.text
    assert client.get(f"/characters/{lisa}/mode", headers=alice).json()["checkpoint_id"] == epoch2

    off = client.delete(f"/characters/{lisa}/activate", headers=alice)
    assert off.status_code == 200, off.text
    assert off.json()["mode"] == "identity_reference" and off.json()["checkpoint_id"] is None
    assert off.json()["reason"].startswith(
        f"identity_reference: no LoRA is active (the user deactivated checkpoint {epoch2} at strength 0.8"
    )
