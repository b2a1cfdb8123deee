"""Reviews over the API: labels with reasons (the rules of `flenwheel review`), history, captions."""

from __future__ import annotations

from webapi import Api

from photos import LISA


def _asset(api: Api) -> int:
    character_id = api.character()
    (result,) = api.upload(character_id, LISA[5])["results"]
    return int(result["asset_id"])


def test_label_with_reason_becomes_the_current_label(api: Api) -> None:
    asset_id = _asset(api)
    first = api.client.post(
        f"/assets/{asset_id}/reviews", json={"label": "needs_correction", "reason": "hand"}, headers=api.alice
    )
    assert first.status_code == 201 and first.json()["source"] == "user"
    api.client.post(f"/assets/{asset_id}/reviews", json={"label": "good"}, headers=api.alice)
    asset = api.client.get(f"/assets/{asset_id}", headers=api.alice).json()
    assert asset["label"] == "good"
    history = api.client.get(f"/assets/{asset_id}/reviews", headers=api.alice).json()
    assert [(r["label"], r["reason"]) for r in history] == [("needs_correction", "hand"), ("good", "")]


def test_reject_without_a_reason_is_refused_saying_why(api: Api) -> None:
    asset_id = _asset(api)
    response = api.client.post(f"/assets/{asset_id}/reviews", json={"label": "reject"}, headers=api.alice)
    assert response.status_code == 400 and "reason" in response.json()["detail"]
    unknown = api.client.post(f"/assets/{asset_id}/reviews", json={"label": "great"}, headers=api.alice)
    assert unknown.status_code == 422 and "label" in unknown.json()["detail"]


def test_caption_must_hold_the_trigger_token(api: Api) -> None:
    asset_id = _asset(api)
    ok = api.client.put(
        f"/assets/{asset_id}/caption",
        json={"caption": "photo of ohwx_lisa woman, smiling"},
        headers=api.alice,
    )
    assert ok.status_code == 200 and ok.json()["caption"] == "photo of ohwx_lisa woman, smiling"
    bad = api.client.put(
        f"/assets/{asset_id}/caption", json={"caption": "photo of a woman"}, headers=api.alice
    )
    assert bad.status_code == 400 and "ohwx_lisa" in bad.json()["detail"]


def test_another_user_cannot_label_or_read_labels(api: Api) -> None:
    asset_id = _asset(api)
    labelled = api.client.post(f"/assets/{asset_id}/reviews", json={"label": "good"}, headers=api.bob)
    assert labelled.status_code == 404
    assert api.client.get(f"/assets/{asset_id}/reviews", headers=api.bob).status_code == 404
    caption = api.client.put(f"/assets/{asset_id}/caption", json={"caption": "ohwx_lisa"}, headers=api.bob)
    assert caption.status_code == 404
    assert api.client.get(f"/assets/{asset_id}/reviews", headers=api.alice).json() == []


def test_invisible_characters_are_stripped_from_captions(api: Api) -> None:
    """Issue 10 case 12: a BOM and zero-width spaces pasted into a caption are not stored."""
    asset_id = _asset(api)
    response = api.client.put(
        f"/assets/{asset_id}/caption",
        json={"caption": "\ufeffphoto of ohwx_lisa\u200b woman,\u00a0smiling"},
        headers=api.alice,
    )
    assert response.status_code == 200, response.text
    assert response.json()["caption"] == "photo of ohwx_lisa woman, smiling"
    stored = api.client.get(f"/assets/{asset_id}", headers=api.alice).json()["caption"]
    assert stored == "photo of ohwx_lisa woman, smiling"
