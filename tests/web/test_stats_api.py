"""GET /stats shows a user their own characters' figures only (an operator's token sees all), and GET /metrics
is Prometheus text that prometheus-client's own parser reads, for operators only."""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass

import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner
from webapi import Api, bearer

from flenwheel.cli import app
from flenwheel.pipeline.generation import run_generation
from flenwheel.providers.base import (
    Capability,
    GenerationRequest,
    GenerationResult,
    ProviderContext,
    ProviderError,
    TextToImage,
    output_image,
)
from flenwheel.web.auth import add_user


@dataclass
class PaintEngine:
    """A third-party-style engine that paints a flat image at $0.02 — or refuses every request for good."""

    id: str
    refuse: bool = False
    capabilities: frozenset[Capability] = frozenset({Capability.TEXT_TO_IMAGE})
    allows_nsfw: bool = True
    paid: bool = True

    def estimate_cost(self, request: GenerationRequest) -> float:
        return 0.02 * request.count

    def generate(self, request: GenerationRequest, ctx: ProviderContext) -> GenerationResult:
        ctx.remember_remote_id(f"{self.id}-{request.seed}")
        if self.refuse:
            raise ProviderError(self.id, "HTTP 451: refused by the test engine", transient=False)
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (200, 40, 40)).save(buffer, format="PNG")
        image = output_image(self.id, buffer.getvalue(), request.seed)
        return GenerationResult(images=(image,), provider=self.id, model="paint-v1", cost_usd=0.02)


@pytest.fixture
def history(sqlite_api: Api) -> dict[str, int]:
    """alice's character drew one image on `paint`; bob's was refused by `refusing`."""
    alice, bob = sqlite_api.character("lisa"), sqlite_api.character("lisa", headers=sqlite_api.bob)
    request = TextToImage(prompt="a red square", seed=1, width=64, height=64, steps=1)
    run_generation(sqlite_api.project, f"#{alice}", request, providers=[PaintEngine("paint")])
    with pytest.raises(ProviderError):
        run_generation(
            sqlite_api.project, f"#{bob}", request, providers=[PaintEngine("refusing", refuse=True)]
        )
    return {"alice": alice, "bob": bob}


def test_a_user_sees_only_their_own_characters_figures(sqlite_api: Api, history: dict[str, int]) -> None:
    mine = sqlite_api.client.get("/stats", params={"since": "1h"}, headers=sqlite_api.alice)
    assert mine.status_code == 200, mine.text
    figures = mine.json()
    assert [(e["engine"], e["succeeded"], e["failed"]) for e in figures["engines"]] == [("paint", 1, 0)]
    assert figures["engines"][0]["cost_per_image_usd"] == pytest.approx(0.02)
    assert [s["character_id"] for s in figures["spend"]] == [history["alice"]]
    assert "refusing" not in mine.text  # bob's engine and error never show
    theirs = sqlite_api.client.get("/stats", headers=sqlite_api.bob).json()
    assert [(e["engine"], e["failed"]) for e in theirs["engines"]] == [("refusing", 1)]
    assert theirs["engines"][0]["errors"] == [{"kind": "refusing HTTP 451", "count": 1}]
    assert '"paint' not in json.dumps(theirs)  # alice's engine (a string that starts with it) never shows
    # another user's character answers like one that does not exist
    other = sqlite_api.client.get("/stats", params={"character_id": history["bob"]}, headers=sqlite_api.alice)
    assert other.status_code == 404
    assert sqlite_api.client.get("/stats").status_code == 401
    assert (
        sqlite_api.client.get("/stats", params={"since": "soon"}, headers=sqlite_api.alice).status_code == 400
    )


def test_an_operator_sees_every_character_and_reads_prometheus_metrics(
    sqlite_api: Api, history: dict[str, int]
) -> None:
    _, token = add_user(sqlite_api.project, "ops", operator=True)
    ops = bearer(token)
    every = sqlite_api.client.get("/stats", headers=ops).json()
    assert {e["engine"] for e in every["engines"]} == {"paint", "refusing"}
    assert {s["character_id"] for s in every["spend"]} == set(history.values())
    assert sqlite_api.client.get("/metrics", headers=sqlite_api.alice).status_code == 403
    scraped = sqlite_api.client.get("/metrics", headers=ops)
    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
    families = {family.name: family for family in text_string_to_metric_families(scraped.text)}
    labels = {"area": "studio_generate", "engine": "paint", "model": "paint-v1"}
    duration = families["flenwheel_request_duration_seconds"]
    assert duration.type == "histogram"
    samples = {
        (s.name, s.labels.get("le")): s.value for s in duration.samples if s.labels.items() >= labels.items()
    }
    assert samples[("flenwheel_request_duration_seconds_count", None)] == 1
    assert samples[("flenwheel_request_duration_seconds_bucket", "+Inf")] == 1
    assert ("flenwheel_request_duration_seconds_bucket", "30.0") in samples  # an SLA target is a bucket edge
    finished = {
        (s.labels["engine"], s.labels["status"]): s.value
        for s in families["flenwheel_requests"].samples
        if s.name == "flenwheel_requests_total"
    }
    assert finished == {("paint", "succeeded"): 1, ("refusing", "failed"): 1}
    [failure] = [s for s in families["flenwheel_request_failures"].samples if s.name.endswith("_total")]
    assert (failure.labels["error_kind"], failure.value) == ("refusing HTTP 451", 1)
    cost = {
        s.labels["engine"]: s.value
        for s in families["flenwheel_cost_usd"].samples
        if s.name.endswith("_total")
    }
    assert cost == {"paint": pytest.approx(0.02), "refusing": 0.0}


def test_operators_are_made_and_unmade_from_the_cli(sqlite_api: Api) -> None:
    runner = CliRunner()
    root = str(sqlite_api.project.root)
    made = runner.invoke(app, ["--project", root, "user", "add", "ops", "--operator", "--json"])
    assert made.exit_code == 0, made.output
    token = json.loads(made.output)
    assert token["operator"] is True
    assert sqlite_api.client.get("/metrics", headers=bearer(token["token"])).status_code == 200
    off = runner.invoke(app, ["--project", root, "user", "operator", "ops", "--off"])
    assert off.exit_code == 0, off.output
    assert sqlite_api.client.get("/metrics", headers=bearer(token["token"])).status_code == 403


def _sign_in(api: Api, headers: dict[str, str]) -> None:
    """Sign the test client in to the web app with a user's token (the sign-in form and its CSRF token)."""
    api.client.cookies.clear()
    form = api.client.get("/signin")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    token = headers["Authorization"].removeprefix("Bearer ")
    signed = api.client.post("/signin", data={"token": token, "csrf": csrf.group(1)}, follow_redirects=False)
    assert signed.status_code == 303, signed.text


def test_the_jobs_and_character_pages_show_the_same_figures(sqlite_api: Api, history: dict[str, int]) -> None:
    figures = sqlite_api.client.get("/stats", headers=sqlite_api.alice).json()
    [paint] = figures["engines"]
    _sign_in(sqlite_api, sqlite_api.alice)
    for path in ("/activity", f"/c/{history['alice']}"):
        page = sqlite_api.client.get(path)
        assert page.status_code == 200, path
        assert "Speed, failures and cost" in page.text and "paint (paint-v1)" in page.text, path
        assert f"{paint['succeeded']} / {paint['failed']} of {paint['requests']}" in page.text, path
        assert "$0.0200" in page.text and "refusing" not in page.text, path  # bob's engine never shows
    _sign_in(sqlite_api, sqlite_api.bob)
    theirs = sqlite_api.client.get("/activity").text
    assert "refusing HTTP 451 ×1" in theirs and "paint" not in theirs.split("Speed, failures and cost")[1]
