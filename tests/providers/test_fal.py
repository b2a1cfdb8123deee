"""FalProvider against a local server that speaks fal's queue and storage protocol (fal_server.py)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fal_server import FalServer, draw
from PIL import Image

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
from flenwheel.providers.fal import MISSING_KEY, FalProvider
from flenwheel.providers.pricing import Price, PriceTable
from flenwheel.remote.errors import ATTEMPTS


class SimulatedCrash(Exception):
    pass


class CrashOnProgress(LocalContext):
    """A worker that dies while it waits: after the request id was remembered, before the result came."""

    def progress(self, done: int, total: int) -> None:
        raise SimulatedCrash


class CancelWhileRunning(LocalContext):
    """The user presses cancel once the engine reports progress."""

    def progress(self, done: int, total: int) -> None:
        self.cancel()


@pytest.fixture
def server() -> Iterator[FalServer]:
    running = FalServer().start()
    yield running
    running.stop()


def provider_for(server: FalServer, **options: Any) -> FalProvider:
    """A provider on the local server; waits between retries are recorded in `server.waits`, not slept."""
    options.setdefault("sleep", server.waits.append)
    return FalProvider(server.key, queue_url=server.url, rest_url=server.url, poll_interval=0.01, **options)


def _png_of(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png(width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    return _png_of(Image.new("RGB", (width, height), colour))


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def test_text_to_image_returns_the_png_the_server_drew(server: FalServer) -> None:
    request = TextToImage(prompt="a lighthouse at dusk", width=256, height=192, seed=7, steps=20)
    result = provider_for(server).generate(request, LocalContext())

    (image,) = result.images
    assert image.data.startswith(b"\x89PNG\r\n\x1a\n")
    assert (image.width, image.height, image.seed) == (256, 192, 7)
    assert np.array_equal(pixels(image.data), pixels(_png_of(draw(256, 192, "a lighthouse at dusk", 7, 0))))
    (submission,) = server.submissions
    assert submission.endpoint == "fal-ai/flux/dev"
    assert submission.authorization == "Key test-fal-key"
    assert submission.arguments["prompt"] == "a lighthouse at dusk"
    assert submission.arguments["image_size"] == {"width": 256, "height": 192}
    assert (result.provider, result.model, result.engine_seconds) == ("fal", "fal-ai/flux/dev", 0.42)
    assert result.remote_id == next(iter(server.requests))


def test_a_jpeg_from_the_server_comes_back_as_png(server: FalServer) -> None:
    server.output_format = "jpeg"  # an endpoint that ignores output_format
    result = provider_for(server).generate(
        TextToImage(prompt="a fox", width=128, height=128, seed=3), LocalContext()
    )

    data = result.images[0].data
    assert data.startswith(b"\x89PNG")
    assert np.abs(pixels(data) - pixels(_png_of(draw(128, 128, "a fox", 3, 0)))).mean() < 3


def test_request_id_is_remembered_before_the_first_status_poll(server: FalServer) -> None:
    ctx = LocalContext()
    seen: list[tuple[str, str | None]] = []
    server.on_first_status = lambda request_id: seen.append((request_id, ctx.known_remote_id()))

    result = provider_for(server).generate(TextToImage(prompt="a cat", width=64, height=64), ctx)

    assert seen == [(result.remote_id, result.remote_id)]


def test_resuming_after_a_crash_does_not_submit_again(server: FalServer) -> None:
    crashed = CrashOnProgress()
    request = TextToImage(prompt="a harbour", width=64, height=64, seed=11)
    with pytest.raises(SimulatedCrash):
        provider_for(server).generate(request, crashed)
    remembered = crashed.known_remote_id()
    assert remembered is not None

    restarted = LocalContext()
    restarted.remember_remote_id(remembered)  # what the job store hands the next attempt
    result = provider_for(server).generate(request, restarted)

    assert len(server.submissions) == 1
    assert result.remote_id == remembered
    assert np.array_equal(pixels(result.images[0].data), pixels(_png_of(draw(64, 64, "a harbour", 11, 0))))


def test_a_request_fal_forgot_is_submitted_again(server: FalServer) -> None:
    ctx = LocalContext()
    ctx.remember_remote_id("0b6f4e9e-gone")
    result = provider_for(server).generate(TextToImage(prompt="a boat", width=64, height=64), ctx)

    assert len(server.submissions) == 1
    assert ctx.known_remote_id() == result.remote_id != "0b6f4e9e-gone"


def test_progress_follows_the_step_counter_in_the_logs(server: FalServer) -> None:
    steps: list[tuple[int, int]] = []
    ctx = LocalContext(on_progress=lambda done, total: steps.append((done, total)))
    provider_for(server).generate(TextToImage(prompt="an owl", width=64, height=64, steps=20), ctx)

    assert steps and {total for _, total in steps} == {20}
    assert [done for done, _ in steps] == sorted(done for done, _ in steps)


def test_cancel_calls_the_cancel_endpoint_and_stops(server: FalServer) -> None:
    server.pending_polls = 10_000
    ctx = CancelWhileRunning()

    with pytest.raises(Cancelled):
        provider_for(server).generate(TextToImage(prompt="a tower", width=64, height=64), ctx)

    assert server.cancels == [ctx.known_remote_id()]
    assert all(request.outcome is None for request in server.requests.values())  # no result was produced


def test_a_job_cancelled_before_it_starts_is_never_submitted(server: FalServer) -> None:
    ctx = LocalContext()
    ctx.cancel()
    with pytest.raises(Cancelled):
        provider_for(server).generate(TextToImage(prompt="a tower", width=64, height=64), ctx)
    assert server.submissions == []


def test_a_rate_limited_submission_waits_as_fal_says_and_is_sent_once_accepted(server: FalServer) -> None:
    server.fail("submit", 429, {"detail": "Rate limit exceeded"}, {"Retry-After": "7"}, times=2)
    result = provider_for(server).generate(TextToImage(prompt="a cat", width=64, height=64), LocalContext())

    assert server.waits[:2] == [7.0, 7.0]  # Retry-After honoured before each new attempt
    assert list(server.requests) == [result.remote_id]  # accepted once


def test_rate_limit_that_outlasts_the_retries_is_transient_and_says_when_to_retry(server: FalServer) -> None:
    server.fail("submit", 429, {"detail": "Rate limit exceeded"}, {"Retry-After": "7"}, times=ATTEMPTS)
    with pytest.raises(ProviderError) as caught:
        provider_for(server).generate(TextToImage(prompt="a cat", width=64, height=64), LocalContext())

    assert caught.value.transient
    assert "Rate limit exceeded" in str(caught.value) and "retry after 7 s" in str(caught.value)
    assert server.requests == {} and server.waits == [7.0] * (ATTEMPTS - 1)


def test_a_retry_after_too_long_to_wait_here_goes_up_at_once(server: FalServer) -> None:
    server.fail("submit", 429, {"detail": "Rate limit exceeded"}, {"Retry-After": "3600"})
    with pytest.raises(ProviderError, match="retry after 3600 s") as caught:
        provider_for(server).generate(TextToImage(prompt="a cat", width=64, height=64), LocalContext())
    assert caught.value.transient and server.waits == []


def test_a_server_error_at_submission_is_not_sent_again(server: FalServer) -> None:
    """fal may have queued it before failing: sending it again could pay twice."""
    server.fail("submit", 500, {"detail": "Internal Server Error"})
    with pytest.raises(ProviderError) as caught:
        provider_for(server).generate(TextToImage(prompt="a cat", width=64, height=64), LocalContext())
    assert caught.value.transient and server.waits == []


def test_a_passing_server_error_while_polling_is_retried(server: FalServer) -> None:
    server.fail("status", 503, {"detail": "Service Unavailable"}, times=2)
    result = provider_for(server).generate(TextToImage(prompt="a cat", width=64, height=64), LocalContext())
    assert len(server.submissions) == 1 and result.images and len(server.waits) >= 2


def test_server_error_is_transient_and_the_retry_resumes_the_same_request(server: FalServer) -> None:
    server.fail("status", 500, {"detail": "Internal Server Error"}, times=ATTEMPTS)
    ctx = LocalContext()
    request = TextToImage(prompt="a bridge", width=64, height=64)
    with pytest.raises(ProviderError) as caught:
        provider_for(server).generate(request, ctx)
    assert caught.value.transient

    result = provider_for(server).generate(request, ctx)
    assert len(server.submissions) == 1 and result.remote_id == ctx.known_remote_id()


def test_validation_error_is_permanent_and_carries_fals_message(server: FalServer) -> None:
    with pytest.raises(ProviderError) as caught:
        provider_for(server).generate(TextToImage(prompt="", width=64, height=64), LocalContext())

    assert not caught.value.transient
    assert "HTTP 422" in str(caught.value) and "prompt: Field required" in str(caught.value)


def test_a_rejected_submission_is_permanent_with_its_message(server: FalServer) -> None:
    detail = [
        {"loc": ["body", "image_size"], "msg": "Image size too large for this model", "type": "value_error"}
    ]
    server.fail("submit", 422, {"detail": detail})
    with pytest.raises(ProviderError) as caught:
        provider_for(server).generate(TextToImage(prompt="a cat", width=64, height=64), LocalContext())
    assert not caught.value.transient and "image_size: Image size too large for this model" in str(
        caught.value
    )


def test_a_wrong_key_is_permanent_and_says_which_setting(server: FalServer) -> None:
    provider = FalProvider("not-the-key", queue_url=server.url, rest_url=server.url, poll_interval=0.01)
    with pytest.raises(ProviderError) as caught:
        provider.generate(TextToImage(prompt="a cat", width=64, height=64), LocalContext())
    assert not caught.value.transient and "FAL_KEY" in str(caught.value)


def test_an_unreachable_fal_is_transient(server: FalServer) -> None:
    provider = provider_for(server)
    server.stop()
    with pytest.raises(ProviderError) as caught:
        provider.generate(TextToImage(prompt="a cat", width=64, height=64), LocalContext())
    assert caught.value.transient


def test_a_job_still_running_at_the_deadline_is_cancelled_on_fal(server: FalServer) -> None:
    """Never left running (and billing) behind: the request is cancelled, and the error says how to wait longer."""
    server.pending_polls = 10_000
    ctx = LocalContext()
    with pytest.raises(ProviderError) as caught:
        provider_for(server, timeout_s=0.0).generate(TextToImage(prompt="a cat", width=64, height=64), ctx)
    remembered = ctx.known_remote_id()
    assert not caught.value.transient and remembered is not None and remembered in str(caught.value)
    assert "FLENWHEEL_REMOTE_TIMEOUT_S" in str(caught.value)
    assert server.cancels == [remembered]


def test_loras_reach_fal_with_their_urls_and_scales(server: FalServer, tmp_path: Path) -> None:
    weights = tmp_path / "character.safetensors"
    weights.write_bytes(b"fake safetensors bytes")
    request = TextToImage(
        prompt="ohwx woman reading",
        width=64,
        height=64,
        loras=(
            LoraRef(path=str(weights), strength=0.8),
            LoraRef(path="https://example.com/style.safetensors", strength=0.3),
        ),
    )
    provider = provider_for(server)
    provider.generate(request, LocalContext())
    provider.generate(request, LocalContext())

    first, second = server.submissions
    assert first.endpoint == "fal-ai/flux-lora"
    (uploaded,) = server.uploads  # the local file went up once and was reused
    assert uploaded.data == b"fake safetensors bytes"
    assert first.arguments["loras"][0]["path"].startswith(f"{server.url}/files/")
    assert first.arguments["loras"][0]["scale"] == 0.8
    assert first.arguments["loras"][1] == {"path": "https://example.com/style.safetensors", "scale": 0.3}
    assert second.arguments["loras"] == first.arguments["loras"]


def test_a_missing_lora_file_is_a_clear_permanent_error(server: FalServer, tmp_path: Path) -> None:
    request = TextToImage(prompt="x", loras=(LoraRef(path=str(tmp_path / "nope.safetensors")),))
    with pytest.raises(ProviderError) as caught:
        provider_for(server).generate(request, LocalContext())
    assert not caught.value.transient and "nope.safetensors not found" in str(caught.value)
    assert server.submissions == []


def test_small_inputs_travel_inline_and_large_ones_are_uploaded(server: FalServer) -> None:
    source = png(64, 64, (200, 30, 30))
    request = ImageToImage(prompt="repaint", image=source, strength=0.25, width=64, height=64, seed=5)
    inline = provider_for(server).generate(request, LocalContext())
    uploaded = provider_for(server, inline_limit=0).generate(request, LocalContext())

    first, second = server.submissions
    assert first.endpoint == "fal-ai/flux/dev/image-to-image" and first.arguments["strength"] == 0.25
    assert first.arguments["image_url"].startswith("data:image/png;base64,")
    assert second.arguments["image_url"].startswith(f"{server.url}/files/")
    assert [stored.data for stored in server.uploads] == [source]
    expected = Image.blend(Image.open(io.BytesIO(source)).convert("RGB"), draw(64, 64, "repaint", 5, 0), 0.25)
    assert np.array_equal(pixels(inline.images[0].data), pixels(_png_of(expected)))
    assert np.array_equal(pixels(uploaded.images[0].data), pixels(inline.images[0].data))


def test_inpaint_keeps_the_original_where_the_mask_is_black(server: FalServer) -> None:
    source = png(64, 64, (10, 200, 10))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 0, 64, 64))  # redraw the right half only
    request = Inpaint(prompt="a red door", image=source, mask=_png_of(mask), width=64, height=64, seed=9)
    result = provider_for(server).generate(request, LocalContext())

    assert server.submissions[0].endpoint == "fal-ai/flux-lora/inpainting"
    assert server.submissions[0].arguments["mask_url"].startswith("data:image/png")
    out = pixels(result.images[0].data)
    assert (out[:, :32] == (10, 200, 10)).all()
    assert not (out[:, 32:] == (10, 200, 10)).all()


def test_upscale_returns_the_bigger_image_at_the_esrgan_price(server: FalServer) -> None:
    result = provider_for(server).generate(Upscale(image=png(64, 48, (1, 2, 3)), factor=4), LocalContext())

    assert (result.images[0].width, result.images[0].height) == (256, 192)
    assert server.submissions[0].endpoint == "fal-ai/esrgan"
    assert server.submissions[0].arguments["scale"] == 4
    price = PriceTable.load().price("fal", "fal-ai/esrgan")  # billed per second of compute
    assert price.per_gpu_second > 0
    assert result.cost_usd == pytest.approx(price.cost(1, 256, 192, result.engine_seconds or 0.0))


def test_identity_reference_sends_the_face_to_pulid(server: FalServer) -> None:
    face = png(96, 96, (180, 140, 120))
    request = IdentityReference(
        prompt="ohwx on a beach", references=(face,), identity_strength=1.1, width=64, height=64
    )
    provider_for(server, inline_limit=0).generate(request, LocalContext())

    (submission,) = server.submissions
    assert submission.endpoint == "fal-ai/flux-pulid" and submission.arguments["id_weight"] == 1.1
    assert submission.arguments["reference_image_url"].startswith(f"{server.url}/files/")
    assert [stored.data for stored in server.uploads] == [face]


def test_cost_comes_from_the_price_table(server: FalServer) -> None:
    prices = PriceTable({"fal": {"fal-ai/flux/dev": Price(per_megapixel=0.5, source="test")}})
    provider = provider_for(server, prices=prices)
    request = TextToImage(prompt="a cat", width=1000, height=1000, count=2)

    result = provider.generate(request, LocalContext())

    assert len(result.images) == 2
    assert result.cost_usd == pytest.approx(1.0)  # 2 images x 1 MP x $0.5
    assert provider.estimate_cost(request) == pytest.approx(1.0)


def test_images_blanked_by_the_safety_checker_are_a_clear_error(server: FalServer) -> None:
    server.flag_nsfw = True
    with pytest.raises(ProviderError) as caught:
        provider_for(server).generate(TextToImage(prompt="a cat", width=64, height=64), LocalContext())
    assert not caught.value.transient and "safety checker" in str(caught.value)


def test_missing_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FAL_KEY", raising=False)
    with pytest.raises(ProviderError, match="FAL_KEY is not set: export it or pick --provider local"):
        FalProvider(None)
    with pytest.raises(ProviderError) as caught:
        FalProvider("  ")
    assert MISSING_KEY in str(caught.value) and not caught.value.transient
    assert FalProvider.from_settings(Settings(project=tmp_path)) is None


def test_settings_point_the_provider_at_the_configured_queue(server: FalServer, tmp_path: Path) -> None:
    server.queued_polls = server.pending_polls = (
        0  # done at the first poll: the default 1 s interval never runs
    )
    settings = Settings(
        project=tmp_path, fal_key=server.key, fal_queue_url=server.url, fal_rest_url=server.url
    )
    provider = FalProvider.from_settings(settings)
    assert provider is not None

    result = provider.generate(TextToImage(prompt="a cat", width=64, height=64), LocalContext())
    assert result.remote_id in server.requests
