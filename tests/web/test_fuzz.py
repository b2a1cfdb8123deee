"""Every route of the OpenAPI document, called with values drawn from its own schema and from outside it
(schemathesis is not installed here; this is the same idea with hypothesis): no request may crash the
server (500) or answer an error without a `detail` saying what is wrong."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from webapi import Api, make_api

from flenwheel.store.project import Project

from photos import LISA

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
NOT_JSON = {"image/jpeg", "image/png", "image/webp", "application/zip", "application/octet-stream"}


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """alice owns character 1 with asset 1 and a queued job 1; bob owns character 2."""
    from flenwheel.config import Settings

    project = Project.init(Settings(project=tmp_path_factory.mktemp("fuzz") / "project"))
    for api in make_api(project, raise_server_exceptions=False):  # a crash must come back as a 500
        character_id = api.character()
        api.character("bobs", api.bob)
        api.upload(character_id, LISA[5])
        api.client.post("/jobs", json={"kind": "noop", "character_id": character_id}, headers=api.alice)
        yield api
    project.close()


def _values(
    schema: dict[str, Any], document: dict[str, Any] | None = None, depth: int = 0
) -> st.SearchStrategy[Any]:
    """Values that fit `schema`, mixed with values of the right type that do not (out of range, odd text).
    With the OpenAPI `document`, `$ref`s are followed (a few levels), so nested payload models are shaped."""
    if "$ref" in schema:
        if document is None or depth > 3:
            return JSON_VALUES
        return _bodies(schema, document, depth + 1)
    if "anyOf" in schema or "oneOf" in schema:
        return st.one_of(
            [_values(option, document, depth) for option in schema.get("anyOf", schema.get("oneOf"))]
        )
    if "const" in schema:
        return st.just(schema["const"]) | st.text(max_size=10)
    if "enum" in schema:
        return st.sampled_from(schema["enum"]) | st.text(max_size=10)
    kind = schema.get("type")
    if kind == "integer":
        low, high = schema.get("minimum", -(2**70)), schema.get("maximum", 2**70)
        return st.integers(1, 3) | st.integers(low, high) | st.integers()
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False) | st.integers(-1, 3)
    if kind == "object":
        if "properties" in schema and document is not None:
            return _bodies(schema, document, depth + 1)
        return st.dictionaries(st.text(max_size=12), JSON_VALUES, max_size=4)
    if kind == "array":
        items = schema.get("items")
        if isinstance(items, dict) and document is not None:
            return st.lists(_values(items, document, depth + 1), max_size=3) | st.lists(
                JSON_VALUES, max_size=3
            )
        return st.lists(JSON_VALUES, max_size=3)
    if kind == "boolean":
        return st.booleans() | st.sampled_from(["yes", "maybe", ""])
    if kind == "null":
        return st.none()
    if kind == "string" and "maxLength" in schema:  # just past the limit too: a 1 MB prompt must be a 422
        return st.text(max_size=30) | st.just("x" * (schema["maxLength"] + 1))
    return st.text(max_size=30)


def _bodies(schema: dict[str, Any], document: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """JSON bodies shaped like the route's model (its fields, with fitting and unfitting values), or anything.
    A union of models (POST /jobs: one model per job kind, told apart by `kind`) draws one of them."""
    if "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    if "oneOf" in schema:
        return st.one_of([_bodies(option, document, depth) for option in schema["oneOf"]])
    fields = schema.get("properties", {})
    shaped = st.fixed_dictionaries(
        {
            name: _values(field, document, depth)
            for name, field in fields.items()
            if name in schema.get("required", [])
        },
        optional={
            name: _values(field, document, depth)
            for name, field in fields.items()
            if name not in schema.get("required", [])
        },
    )
    return shaped | JSON_VALUES


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
        if not path.endswith("/events")  # a stream follows a queued job for as long as it stays queued
    ]


def test_no_request_crashes_the_server(fuzzed: Api) -> None:
    document = fuzzed.client.get("/openapi.json").json()
    operations = _operations(document)
    assert len(operations) >= 20

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def call_any_route(data: st.DataObject) -> None:
        method, path, operation = data.draw(st.sampled_from(operations), label="route")
        url = path
        query: dict[str, Any] = {}
        for parameter in operation.get("parameters", []):
            value = data.draw(_values(parameter.get("schema", {}), document), label=parameter["name"])
            if parameter["in"] == "path":
                url = url.replace("{" + parameter["name"] + "}", str(value))
            elif value is not None and data.draw(st.booleans(), label=f"send {parameter['name']}"):
                query[parameter["name"]] = value
        body = operation.get("requestBody", {}).get("content", {})
        headers = data.draw(st.sampled_from([fuzzed.alice, fuzzed.bob, {}]), label="who")
        kwargs: dict[str, Any] = {"params": query, "headers": headers}
        if "application/json" in body:
            kwargs["json"] = data.draw(_bodies(body["application/json"]["schema"], document), label="json")
        elif "multipart/form-data" in body:
            files = data.draw(st.lists(st.binary(max_size=200), min_size=0, max_size=3), label="files")
            kwargs["files"] = [("files", (f"f{i}.jpg", blob, "image/jpeg")) for i, blob in enumerate(files)]
        response = fuzzed.client.request(method, url, **kwargs)
        assert response.status_code < 500, (method, url, kwargs, response.text)
        content_type = response.headers.get("content-type", "")
        if response.status_code in (204, 304) or content_type.split(";")[0] in NOT_JSON:
            return
        answer = response.json()
        if response.status_code >= 400:
            assert isinstance(answer.get("detail"), str) and answer["detail"], (method, url, answer)

    call_any_route()


def test_every_job_kinds_payload_is_fuzzed_and_what_is_queued_is_what_the_worker_takes(fuzzed: Api) -> None:
    """Each kind's typed payload, from the OpenAPI document's union: no 500, a 422 names what is wrong, and a
    202 queues a payload that the worker's own model (jobs/kinds.py) accepts."""
    from flenwheel.jobs import kinds

    document = fuzzed.client.get("/openapi.json").json()
    union = document["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    mapping = union["discriminator"]["mapping"]
    assert {"chain", "curate", "generate", "train", "studio_generate"} <= set(mapping)
    assert not [kind for kind in mapping if kind.startswith("chain_")]
    accepted: dict[str, int] = {}

    for kind, reference in sorted(mapping.items()):
        model = document["components"]["schemas"][reference.rsplit("/", 1)[1]]
        payload_schema = model["properties"]["payload"]

        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
        @given(payload=_values(payload_schema, document), own=st.booleans(), kind=st.just(kind))
        def submit(payload: Any, own: bool, kind: str) -> None:
            character_id = 1 if own else 2  # 2 is bob's: a 404 for alice
            response = fuzzed.client.post(
                "/jobs",
                json={"kind": kind, "character_id": character_id, "payload": payload},
                headers=fuzzed.alice,
            )
            assert response.status_code < 500, (kind, payload, response.text)
            answer = response.json()
            if response.status_code >= 400:
                assert isinstance(answer.get("detail"), str) and answer["detail"], answer
                return
            assert response.status_code == 202 and own
            worker_model = kinds.info(kind).payload
            assert worker_model is not None
            worker_model.model_validate(answer["payload"])  # the worker takes what the API queued
            accepted[kind] = accepted.get(kind, 0) + 1

        submit()
    assert len(accepted) >= len(mapping) // 2, accepted  # the fuzz reaches valid payloads, not only 422s
