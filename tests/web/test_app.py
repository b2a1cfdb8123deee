"""Authentication, error bodies and the OpenAPI document, as an API client meets them."""

from __future__ import annotations

import pytest
from webapi import Api

PROTECTED = [
    ("GET", "/characters"),
    ("POST", "/characters"),
    ("GET", "/characters/1"),
    ("DELETE", "/characters/1"),
    ("GET", "/characters/1/assets"),
    ("POST", "/characters/1/assets"),
    ("GET", "/assets/1"),
    ("GET", "/assets/1/image"),
    ("POST", "/assets/1/reviews"),
    ("GET", "/characters/1/datasets"),
    ("POST", "/characters/1/datasets"),
    ("GET", "/jobs"),
    ("POST", "/jobs"),
    ("GET", "/jobs/1/events"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_no_token_is_401_saying_how_to_get_one(sqlite_api: Api, method: str, path: str) -> None:
    response = sqlite_api.client.request(method, path)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "flenwheel user add" in response.json()["detail"]


def test_unknown_token_is_401(sqlite_api: Api) -> None:
    response = sqlite_api.client.get("/characters", headers={"Authorization": "Bearer not-a-real-token"})
    assert response.status_code == 401
    assert "not known" in response.json()["detail"]


def test_health_needs_no_token(sqlite_api: Api) -> None:
    response = sqlite_api.client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_openapi_documents_every_route_with_bearer_auth(sqlite_api: Api) -> None:
    document = sqlite_api.client.get("/openapi.json").json()
    assert document["info"]["title"] == "flenwheel API"
    assert "flenwheel user add" in document["info"]["description"]
    assert {tag["name"] for tag in document["tags"]} >= {
        "characters",
        "assets",
        "reviews",
        "datasets",
        "jobs",
    }
    routes = {(method.upper(), path) for path, ops in document["paths"].items() for method in ops}
    assert routes >= {
        ("POST", "/characters"),
        ("GET", "/characters"),
        ("GET", "/characters/{character_id}"),
        ("DELETE", "/characters/{character_id}"),
        ("GET", "/characters/{character_id}/assets"),
        ("POST", "/characters/{character_id}/assets"),
        ("GET", "/assets/{asset_id}"),
        ("GET", "/assets/{asset_id}/image"),
        ("POST", "/assets/{asset_id}/reviews"),
        ("POST", "/characters/{character_id}/datasets"),
        ("GET", "/characters/{character_id}/datasets"),
        ("GET", "/characters/{character_id}/datasets/{number}/export"),
        ("POST", "/jobs"),
        ("GET", "/jobs"),
        ("GET", "/jobs/{job_id}"),
        ("POST", "/jobs/{job_id}/cancel"),
        ("POST", "/jobs/{job_id}/retry"),
        ("GET", "/jobs/{job_id}/events"),
    }
    assert document["components"]["securitySchemes"]["token"]["scheme"] == "bearer"
    listing = document["paths"]["/characters/{character_id}/assets"]["get"]
    assert {p["name"] for p in listing["parameters"]} >= {"kind", "label", "stage", "limit", "offset"}
    assert (
        "text/event-stream"
        in document["paths"]["/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
    )
    assert sqlite_api.client.get("/docs").status_code == 200


def test_a_bad_body_is_422_naming_the_field(sqlite_api: Api) -> None:
    response = sqlite_api.client.post(
        "/characters",
        json={"name": "lisa", "token": "ohwx", "class_word": "woman", "colour": "red"},
        headers=sqlite_api.alice,
    )
    assert response.status_code == 422
    body = response.json()
    assert "colour" in body["detail"]
    assert body["errors"][0]["loc"] == ["body", "colour"]


def test_an_unknown_route_says_where_the_routes_are(sqlite_api: Api) -> None:
    response = sqlite_api.client.get("/charactres", headers=sqlite_api.alice)
    assert response.status_code == 404
    assert "/docs" in response.json()["detail"]
