"""Characters over the API: create (with or without a wizard spec), list with paging, get, delete; each user
sees only their own — on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import func, select
from webapi import Api

from flenwheel.store.models import Asset, Character

from photos import LISA


def test_create_and_get(api: Api) -> None:
    response = api.client.post(
        "/characters",
        json={"name": "lisa", "token": "ohwx_lisa", "class_word": "woman", "budget_usd": 3},
        headers=api.alice,
    )
    assert response.status_code == 201
    created = response.json()
    assert (created["name"], created["token"], created["class_word"], created["budget_usd"]) == (
        "lisa",
        "ohwx_lisa",
        "woman",
        3.0,
    )
    fetched = api.client.get(f"/characters/{created['id']}", headers=api.alice).json()
    assert fetched["name"] == "lisa" and fetched["assets"] == 0
    with api.project.db.session() as session:
        assert session.scalar(select(Character.owner_id).where(Character.name == "lisa")) is not None


def test_create_from_a_spec_derives_token_and_class_and_keeps_the_spec(api: Api) -> None:
    response = api.client.post(
        "/characters",
        json={"name": "Marco", "spec": {"gender_presentation": "man", "hair_colour": "black"}},
        headers=api.alice,
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["token"] == "ohwx_marco" and body["class_word"] == "man"
    assert body["spec"]["hair_colour"] == "black" and body["spec"]["name"] == "Marco"


def test_bad_spec_field_and_missing_token_are_clear_400s(api: Api) -> None:
    bad = api.client.post("/characters", json={"name": "x", "spec": {"hair": "red"}}, headers=api.alice)
    assert bad.status_code == 400 and "hair" in bad.json()["detail"]
    clash = api.client.post("/characters", json={"name": "x", "spec": {"name": "y"}}, headers=api.alice)
    assert clash.status_code == 400 and "spec.name" in clash.json()["detail"]
    missing = api.client.post("/characters", json={"name": "x"}, headers=api.alice)
    assert missing.status_code == 400 and "class_word" in missing.json()["detail"]


def test_a_taken_name_is_409(api: Api) -> None:
    api.character("lisa")
    again = api.client.post(
        "/characters", json={"name": "lisa", "token": "ohwx_l", "class_word": "woman"}, headers=api.alice
    )
    assert again.status_code == 409 and "pick another name" in again.json()["detail"]


def test_list_pages_with_total(api: Api) -> None:
    for index in range(5):
        api.character(f"c{index}")
    first = api.client.get("/characters?limit=2", headers=api.alice).json()
    assert first["total"] == 5 and [c["name"] for c in first["items"]] == ["c0", "c1"]
    names = []
    offset = 0
    while offset < first["total"]:
        page = api.client.get(f"/characters?limit=2&offset={offset}", headers=api.alice).json()
        names += [c["name"] for c in page["items"]]
        offset += 2
    assert names == [f"c{i}" for i in range(5)]


def test_another_users_character_is_invisible(api: Api) -> None:
    mine = api.character("lisa", api.alice)
    api.character("bobs", api.bob)
    listed = api.client.get("/characters", headers=api.bob).json()
    assert [c["name"] for c in listed["items"]] == ["bobs"] and listed["total"] == 1
    assert api.client.get(f"/characters/{mine}", headers=api.bob).status_code == 404
    assert api.client.delete(f"/characters/{mine}", headers=api.bob).status_code == 404
    assert api.client.get(f"/characters/{mine}", headers=api.alice).status_code == 200


def test_delete_removes_the_character_and_its_assets(api: Api) -> None:
    character_id = api.character("lisa")
    api.upload(character_id, LISA[4], LISA[5])
    assert api.client.delete(f"/characters/{character_id}", headers=api.alice).status_code == 204
    assert api.client.get(f"/characters/{character_id}", headers=api.alice).status_code == 404
    with api.project.db.session() as session:
        assert session.scalar(select(func.count(Asset.id))) == 0


def test_delete_is_refused_while_a_job_is_queued(api: Api) -> None:
    character_id = api.character("lisa")
    job = api.client.post(
        "/jobs", json={"kind": "noop", "character_id": character_id}, headers=api.alice
    ).json()
    refused = api.client.delete(f"/characters/{character_id}", headers=api.alice)
    assert refused.status_code == 409 and f"[{job['id']}]" in refused.json()["detail"]
    api.client.post(f"/jobs/{job['id']}/cancel", headers=api.alice)
    assert api.client.delete(f"/characters/{character_id}", headers=api.alice).status_code == 204


def test_flywheel_rounds_are_listed_only_to_their_owner(api: Api) -> None:
    from flenwheel.store.models import FlywheelRound

    character = api.character("lisa")
    assert api.client.get(f"/characters/{character}/flywheel", headers=api.alice).json() == []
    with api.project.db.session() as session:
        session.add(
            FlywheelRound(
                character_id=character,
                number=1,
                stage="filtered",
                status="review",
                record={"filter": {"candidates": 8, "kept": 3}},
            )
        )
    [round_one] = api.client.get(f"/characters/{character}/flywheel", headers=api.alice).json()
    assert (round_one["number"], round_one["status"], round_one["record"]["filter"]["kept"]) == (
        1,
        "review",
        3,
    )
    assert api.client.get(f"/characters/{character}/flywheel", headers=api.bob).status_code == 404
