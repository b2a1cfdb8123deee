"""ReplicateProvider against a local server that speaks Replicate's HTTP API (replicate_server.py)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from replicate_server import MODELS, ReplicateServer, draw, problem

from flenwheel.config import Settings
from flenwheel.providers.base import (
    Cancelled,
    IdentityReference,
    ImageToImage,
    Inpaint,
    LocalContext,
    LoraRef,
    ProviderError,
    TextToImage,
    Upscale,
)
from flenwheel.providers.pricing import Price, PriceTable
from flenwheel.providers.replicate import MISSING_TOKEN, ReplicateProvider, aspect_ratio
from flenwheel.remote.errors import ATTEMPTS


class SimulatedCrash(Exception):
    pass


class CrashOnProgress(LocalContext):
    """A worker that dies while it waits: after the prediction id was remembered, before the output came."""

    def progress(self, done: int, total: int) -> None:
        raise SimulatedCrash


class CancelWhileRunning(LocalContext):
    """The user presses cancel once the model reports progress."""

    def progress(self, done: int, total: int) -> None:
        self.cancel()


@pytest.fixture
def server() -> Iterator[ReplicateServer]:
    running = ReplicateServer().start()
    yield running
    running.stop()


def provider_for(server: ReplicateServer, **options: Any) -> ReplicateProvider:
    """A provider on the local server; waits between retries are recorded in `server.waits`, not slept."""
    options.setdefault("sleep", server.waits.append)
    return ReplicateProvider(server.token, base_url=f"{server.url}/v1", poll_interval=0.01, **options)


def png_of(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png(width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    return png_of(Image.new("RGB", (width, height), colour))


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


# -- generation ------------------------------------------------------------------------------------------------
def test_text_to_image_returns_the_png_the_model_drew(server: ReplicateServer) -> None:
    request = TextToImage(prompt="a lighthouse at dusk", width=512, height=512, seed=7, steps=20)
    result = provider_for(server).generate(request, LocalContext())

    (image,) = result.images
    assert image.data.startswith(b"\x89PNG\r\n\x1a\n")
    assert (image.width, image.height, image.seed) == (128, 128, 7)
    assert np.array_equal(pixels(image.data), pixels(png_of(draw(128, 128, "a lighthouse at dusk", 7, 0))))
    (creation,) = server.creations
    assert creation.path == "/v1/models/black-forest-labs/flux-dev/predictions"
    assert creation.authorization == "Bearer r8_test_token"
    assert creation.body["input"]["prompt"] == "a lighthouse at dusk"
    assert (
        creation.body["input"]["aspect_ratio"] == "1:1" and creation.body["input"]["output_format"] == "png"
    )
    assert (result.provider, result.model, result.engine_seconds) == (
        "replicate",
        "black-forest-labs/flux-dev",
        1.25,
    )
    assert result.remote_id in server.predictions


def test_a_webp_output_comes_back_as_png(server: ReplicateServer) -> None:
    server.output_format = "webp"
    result = provider_for(server).generate(TextToImage(prompt="a fox", seed=3), LocalContext())

    data = result.images[0].data
    assert data.startswith(b"\x89PNG")
    assert np.abs(pixels(data) - pixels(png_of(draw(128, 128, "a fox", 3, 0)))).mean() < 3


def test_the_seed_the_model_chose_is_read_from_its_logs(server: ReplicateServer) -> None:
    result = provider_for(server).generate(TextToImage(prompt="a fox"), LocalContext())
    assert result.images[0].seed == 4242


def test_aspect_ratio_is_the_nearest_flux_ratio() -> None:
    assert aspect_ratio(1024, 1024) == "1:1"
    assert aspect_ratio(1344, 768) == "16:9"
    assert aspect_ratio(832, 1216) == "2:3"


def test_prediction_id_is_remembered_before_the_first_poll(server: ReplicateServer) -> None:
    ctx = LocalContext()
    seen: list[tuple[str, str | None]] = []
    server.on_first_get = lambda prediction_id: seen.append((prediction_id, ctx.known_remote_id()))

    result = provider_for(server).generate(TextToImage(prompt="a cat"), ctx)

    assert seen == [(result.remote_id, result.remote_id)]


def test_resuming_after_a_crash_does_not_create_again(server: ReplicateServer) -> None:
    crashed = CrashOnProgress()
    request = TextToImage(prompt="a harbour", seed=11)
    with pytest.raises(SimulatedCrash):
        provider_for(server).generate(request, crashed)
    remembered = crashed.known_remote_id()
    assert remembered is not None

    restarted = LocalContext()
    restarted.remember_remote_id(remembered)
    result = provider_for(server).generate(request, restarted)

    assert len(server.creations) == 1 and result.remote_id == remembered
    assert np.array_equal(pixels(result.images[0].data), pixels(png_of(draw(128, 128, "a harbour", 11, 0))))


def test_a_prediction_replicate_forgot_is_created_again(server: ReplicateServer) -> None:
    ctx = LocalContext()
    ctx.remember_remote_id("gone0000000000000000000000")
    result = provider_for(server).generate(TextToImage(prompt="a boat"), ctx)
    assert len(server.creations) == 1 and ctx.known_remote_id() == result.remote_id


def test_progress_follows_the_step_counter_in_the_logs(server: ReplicateServer) -> None:
    steps: list[tuple[int, int]] = []
    ctx = LocalContext(on_progress=lambda done, total: steps.append((done, total)))
    provider_for(server).generate(TextToImage(prompt="an owl", steps=20), ctx)
    assert steps and {total for _, total in steps} == {20}


def test_cancel_calls_the_cancel_endpoint_and_stops(server: ReplicateServer) -> None:
    server.pending_polls = 10_000
    ctx = CancelWhileRunning()
    with pytest.raises(Cancelled):
        provider_for(server).generate(TextToImage(prompt="a tower"), ctx)

    assert server.cancels == [ctx.known_remote_id()]
    assert server.predictions[server.cancels[0]].status == "canceled"


def test_a_throttled_creation_waits_as_replicate_says_and_is_sent_once_accepted(
    server: ReplicateServer,
) -> None:
    detail = "Request was throttled. Expected available in 7 seconds."
    server.fail("create", 429, problem(429, "Request was throttled", detail), {"Retry-After": "7"}, times=2)
    result = provider_for(server).generate(TextToImage(prompt="a cat"), LocalContext())

    assert server.waits[:2] == [7.0, 7.0]  # Retry-After honoured before each new attempt
    assert list(server.predictions) == [result.remote_id]


def test_throttling_that_outlasts_the_retries_is_transient(server: ReplicateServer) -> None:
    detail = "Request was throttled. Expected available in 7 seconds."
    server.fail(
        "create", 429, problem(429, "Request was throttled", detail), {"Retry-After": "7"}, times=ATTEMPTS
    )
    with pytest.raises(ProviderError) as caught:
        provider_for(server).generate(TextToImage(prompt="a cat"), LocalContext())
    assert caught.value.transient and "HTTP 429" in str(caught.value) and "7 seconds" in str(caught.value)
    assert server.predictions == {} and server.waits == [7.0] * (ATTEMPTS - 1)


def test_a_server_error_at_creation_is_not_sent_again(server: ReplicateServer) -> None:
    """Replicate may have started it before failing: creating it again could pay twice."""
    server.fail("create", 500, problem(500, "Internal Server Error", "Something went wrong"))
    with pytest.raises(ProviderError) as caught:
        provider_for(server).generate(TextToImage(prompt="a cat"), LocalContext())
    assert caught.value.transient and server.waits == []  # no second attempt


def test_server_error_is_transient_and_the_retry_resumes_the_same_prediction(server: ReplicateServer) -> None:
    server.fail("get", 500, problem(500, "Internal Server Error", "Something went wrong"), times=ATTEMPTS)
    ctx = LocalContext()
    request = TextToImage(prompt="a bridge")
    with pytest.raises(ProviderError) as caught:
        provider_for(server).generate(request, ctx)
    assert caught.value.transient

    result = provider_for(server).generate(request, ctx)
    assert len(server.creations) == 1 and result.remote_id == ctx.known_remote_id()


def test_invalid_input_is_permanent_and_carries_replicates_message(server: ReplicateServer) -> None:
    with pytest.raises(ProviderError) as caught:
        provider_for(server).generate(TextToImage(prompt=""), LocalContext())
    assert not caught.value.transient
    assert "HTTP 422" in str(caught.value) and "prompt is required" in str(caught.value)


def test_a_failed_prediction_is_permanent_with_the_models_error(server: ReplicateServer) -> None:
    server.fail_prediction = "CUDA out of memory. Tried to allocate 2.00 GiB"
    with pytest.raises(ProviderError) as caught:
        provider_for(server).generate(TextToImage(prompt="a cat"), LocalContext())
    assert not caught.value.transient and "CUDA out of memory" in str(caught.value)


def test_a_wrong_token_is_permanent_and_says_which_setting(server: ReplicateServer) -> None:
    provider = ReplicateProvider(
        "r8_wrong", base_url=server.url, poll_interval=0.01, sleep=server.waits.append
    )
    with pytest.raises(ProviderError) as caught:
        provider.generate(TextToImage(prompt="a cat"), LocalContext())
    assert not caught.value.transient and "REPLICATE_API_TOKEN" in str(caught.value)


def test_an_unreachable_replicate_is_transient(server: ReplicateServer) -> None:
    provider = provider_for(server)
    server.stop()
    with pytest.raises(ProviderError) as caught:
        provider.generate(TextToImage(prompt="a cat"), LocalContext())
    assert caught.value.transient


def test_outputs_that_already_expired_are_a_clear_permanent_error(server: ReplicateServer) -> None:
    server.outputs_expired = True  # e.g. a job resumed more than an hour after its prediction finished
    with pytest.raises(ProviderError) as caught:
        provider_for(server).generate(TextToImage(prompt="a cat"), LocalContext())
    assert not caught.value.transient and "an hour" in str(caught.value)


def test_a_lora_url_and_scale_reach_the_lora_model(server: ReplicateServer) -> None:
    url = "https://huggingface.co/someone/character/resolve/main/lora.safetensors"
    request = TextToImage(prompt="ohwx woman reading", loras=(LoraRef(path=url, strength=0.9),))
    result = provider_for(server).generate(request, LocalContext())

    (creation,) = server.creations
    assert creation.path == "/v1/models/black-forest-labs/flux-dev-lora/predictions"
    assert (creation.body["input"]["lora_weights"], creation.body["input"]["lora_scale"]) == (url, 0.9)
    assert result.model == "black-forest-labs/flux-dev-lora"


@pytest.mark.parametrize(
    ("loras", "says"),
    [
        ((LoraRef(path="/home/me/character.safetensors"),), "from a URL"),
        (
            (
                LoraRef(path="https://a.example/1.safetensors"),
                LoraRef(path="https://a.example/2.safetensors"),
            ),
            "one LoRA",
        ),
    ],
)
def test_loras_replicate_cannot_load_are_refused_before_paying(
    server: ReplicateServer, loras: tuple[LoraRef, ...], says: str
) -> None:
    with pytest.raises(ProviderError) as caught:
        provider_for(server).generate(TextToImage(prompt="x", loras=loras), LocalContext())
    assert not caught.value.transient and says in str(caught.value)
    assert server.creations == []


def test_a_community_model_runs_by_its_latest_version(server: ReplicateServer) -> None:
    prices = PriceTable(
        {"replicate": {"nightmareai/real-esrgan": Price(per_gpu_second=0.001, source="test")}}
    )
    result = provider_for(server, prices=prices).generate(
        Upscale(image=png(64, 48, (1, 2, 3)), factor=4), LocalContext()
    )

    assert server.model_lookups == ["nightmareai/real-esrgan"]
    (creation,) = server.creations
    assert (
        creation.path == "/v1/predictions"
        and creation.body["version"] == MODELS["nightmareai/real-esrgan"][1]
    )
    assert creation.body["input"]["scale"] == 4
    assert (result.images[0].width, result.images[0].height) == (256, 192)
    billed_seconds = server.gpu_seconds(server.predictions[result.remote_id or ""])
    assert result.engine_seconds == billed_seconds
    assert result.cost_usd == pytest.approx(billed_seconds * 0.001, abs=1e-6)


def test_an_explicit_version_is_run_as_given(server: ReplicateServer) -> None:
    version = MODELS["black-forest-labs/flux-dev"][1]
    provider_for(server).generate(
        TextToImage(prompt="a cat", model=f"black-forest-labs/flux-dev:{version}"), LocalContext()
    )
    (creation,) = server.creations
    assert creation.path == "/v1/predictions" and creation.body["version"] == version
    assert server.model_lookups == []


def test_small_inputs_travel_inline_and_large_ones_go_through_the_files_api(server: ReplicateServer) -> None:
    source = png(128, 128, (200, 30, 30))
    request = ImageToImage(prompt="repaint", image=source, strength=0.25, width=512, height=512, seed=5)
    inline = provider_for(server).generate(request, LocalContext())
    uploaded = provider_for(server, inline_limit=0).generate(request, LocalContext())

    first, second = server.creations
    assert first.body["input"]["image"].startswith("data:image/png;base64,")
    assert first.body["input"]["prompt_strength"] == 0.25
    assert second.body["input"]["image"].startswith(f"{server.url}/v1/files/")
    assert [(stored.data, stored.content_type) for stored in server.uploads] == [(source, "image/png")]
    expected = Image.blend(
        Image.open(io.BytesIO(source)).convert("RGB"), draw(128, 128, "repaint", 5, 0), 0.25
    )
    assert np.array_equal(pixels(inline.images[0].data), pixels(png_of(expected)))
    assert np.array_equal(pixels(uploaded.images[0].data), pixels(inline.images[0].data))


def test_inpaint_keeps_the_original_where_the_mask_is_black(server: ReplicateServer) -> None:
    source = png(64, 64, (10, 200, 10))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 0, 64, 64))
    request = Inpaint(prompt="a red door", image=source, mask=png_of(mask), seed=9)
    result = provider_for(server).generate(request, LocalContext())

    assert server.creations[0].path == "/v1/models/black-forest-labs/flux-fill-dev/predictions"
    out = pixels(result.images[0].data)
    assert (out[:, :32] == (10, 200, 10)).all() and not (out[:, 32:] == (10, 200, 10)).all()


def test_identity_reference_sends_the_face_to_pulid(server: ReplicateServer) -> None:
    face = png(96, 96, (180, 140, 120))
    request = IdentityReference(
        prompt="ohwx on a beach", references=(face,), identity_strength=1.1, width=128, height=192
    )
    result = provider_for(server).generate(request, LocalContext())

    (creation,) = server.creations
    assert creation.body["version"] == MODELS["bytedance/flux-pulid"][1]
    assert creation.body["input"]["id_weight"] == 1.1 and creation.body["input"][
        "main_face_image"
    ].startswith("data:")
    assert (result.images[0].width, result.images[0].height) == (128, 192)


def test_cost_comes_from_the_price_table(server: ReplicateServer) -> None:
    prices = PriceTable({"replicate": {"black-forest-labs/flux-dev": Price(per_image=0.5, source="test")}})
    provider = provider_for(server, prices=prices)
    request = TextToImage(prompt="a cat", count=2)

    result = provider.generate(request, LocalContext())

    assert len(result.images) == 2 and result.cost_usd == pytest.approx(1.0)
    assert provider.estimate_cost(request) == pytest.approx(1.0)


def test_missing_token_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("REPLICATE_API_TOKEN", raising=False)
    with pytest.raises(ProviderError) as caught:
        ReplicateProvider(None)
    assert str(caught.value) == f"replicate: {MISSING_TOKEN}" and not caught.value.transient
    assert "REPLICATE_API_TOKEN is not set: export it or pick --provider local" in MISSING_TOKEN
    assert ReplicateProvider.from_settings(Settings(project=tmp_path)) is None


def test_settings_point_the_provider_at_the_configured_api(server: ReplicateServer, tmp_path: Path) -> None:
    server.pending_polls = 0
    settings = Settings(
        project=tmp_path, replicate_api_token=server.token, replicate_base_url=f"{server.url}/v1"
    )
    provider = ReplicateProvider.from_settings(settings)
    assert provider is not None
    provider.poll_interval = 0.01

    result = provider.generate(TextToImage(prompt="a cat"), LocalContext())
    assert result.remote_id in server.predictions
