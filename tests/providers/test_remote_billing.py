"""Money on the paid engines, checked against what the local fal and Replicate servers bill.

Each server bills the way its service says it does (fal_server.TARIFF, replicate_server.TARIFF): per image,
per whole megapixel, or per GPU-second while the job runs, until it finishes or is cancelled. A paid engine
must never estimate $0, must estimate at least what the job can bill (so a budget reservation of the
estimate is a hard cap), and must record what was billed. A cancel reaches the service and stops the bill.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fal_server import FalServer
from PIL import Image
from replicate_server import ReplicateServer

from flenwheel.config import Settings
from flenwheel.providers.base import (
    Cancelled,
    GenerationRequest,
    IdentityReference,
    ImageToImage,
    Inpaint,
    LocalContext,
    LoraRef,
    ProviderError,
    TextToImage,
    Upscale,
)
from flenwheel.providers.fal import FalProvider
from flenwheel.providers.pricing import PriceTable
from flenwheel.providers.registry import ProviderRegistry
from flenwheel.providers.replicate import ReplicateProvider
from flenwheel.trainers.registry import TrainerRegistry

LORA = "https://huggingface.co/alice/maya-lora/resolve/main/maya.safetensors"


def png(width: int, height: int, colour: tuple[int, int, int] = (120, 80, 60)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def mask(width: int, height: int) -> bytes:
    image = Image.new("L", (width, height), 0)
    image.paste(255, (width // 2, 0, width, height))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# Every request kind a paid engine takes, with and without a LoRA where the kind takes one.
REQUESTS: dict[str, GenerationRequest] = {
    "text_to_image": TextToImage(prompt="a lighthouse", width=512, height=512, count=2, seed=1),
    "text_to_image_large": TextToImage(prompt="a lighthouse", width=1216, height=832, seed=1),
    "text_to_image_lora": TextToImage(
        prompt="ohwx woman", width=512, height=768, loras=(LoraRef(path=LORA),)
    ),
    "image_to_image": ImageToImage(prompt="repaint", image=png(64, 64), width=512, height=512, seed=2),
    "image_to_image_lora": ImageToImage(
        prompt="ohwx woman", image=png(64, 64), width=512, height=512, loras=(LoraRef(path=LORA),)
    ),
    "inpaint": Inpaint(prompt="a red door", image=png(64, 64), mask=mask(64, 64), width=64, height=64),
    "upscale_2x": Upscale(image=png(64, 48), factor=2),
    "upscale_4x": Upscale(image=png(64, 48), factor=4),
    "identity_reference": IdentityReference(
        prompt="ohwx on a beach", references=(png(96, 96),), width=512, height=512
    ),
}


@pytest.fixture
def fal() -> Iterator[FalServer]:
    running = FalServer().start()
    yield running
    running.stop()


@pytest.fixture
def replicate() -> Iterator[ReplicateServer]:
    running = ReplicateServer().start()
    yield running
    running.stop()


def fal_engine(server: FalServer, **options: Any) -> FalProvider:
    return FalProvider(
        server.key,
        queue_url=server.url,
        rest_url=server.url,
        poll_interval=0.01,
        sleep=server.waits.append,
        **options,
    )


def replicate_engine(server: ReplicateServer, **options: Any) -> ReplicateProvider:
    return ReplicateProvider(
        server.token, base_url=f"{server.url}/v1", poll_interval=0.01, sleep=server.waits.append, **options
    )


class CancelOnProgress(LocalContext):
    """The user presses cancel once the engine reports progress (the job is running on the service)."""

    def progress(self, done: int, total: int) -> None:
        self.cancel()


class CancelAtCheck(LocalContext):
    """The user presses cancel at the n-th check: after submission, while the engine waits."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.checks = at, 0

    def cancelled(self) -> bool:
        self.checks += 1
        if self.checks >= self.at:
            self.cancel()
        return super().cancelled()


# -- estimates -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(REQUESTS))
def test_fal_estimates_are_positive_and_cover_the_bill(fal: FalServer, kind: str) -> None:
    engine = fal_engine(fal)
    request = REQUESTS[kind]
    estimate = engine.estimate_cost(request)
    result = engine.generate(request, LocalContext())

    billed = fal.billed_usd(result.remote_id or "")
    assert engine.paid and estimate > 0
    assert estimate >= billed
    assert result.cost_usd == pytest.approx(billed, abs=1e-6)  # what flenwheel records is what fal billed


@pytest.mark.parametrize("kind", sorted(REQUESTS))
def test_replicate_estimates_are_positive_and_cover_the_bill(replicate: ReplicateServer, kind: str) -> None:
    engine = replicate_engine(replicate)
    request = REQUESTS[kind]
    estimate = engine.estimate_cost(request)
    result = engine.generate(request, LocalContext())

    billed = replicate.billed_usd(result.remote_id or "")
    assert engine.paid and estimate > 0
    assert estimate >= billed
    assert result.cost_usd == pytest.approx(billed, abs=1e-6)


def test_a_per_second_upscale_is_estimated_at_its_time_limit(
    fal: FalServer, replicate: ReplicateServer
) -> None:
    """$0.00111/s × (120 s limit + 30 s for the cancel to land) on fal; $0.000225/s × 150 s on Replicate."""
    upscale = REQUESTS["upscale_2x"]
    assert fal_engine(fal).estimate_cost(upscale) == pytest.approx(0.00111 * 150)
    assert replicate_engine(replicate).estimate_cost(upscale) == pytest.approx(0.000225 * 150)
    assert fal_engine(fal, max_billed_seconds=600).estimate_cost(upscale) == pytest.approx(0.00111 * 630)


def test_fal_bills_whole_megapixels_and_the_estimate_says_so(fal: FalServer) -> None:
    """A 512×512 image is billed as one megapixel on fal: $0.025 on flux/dev, not 0.27 × $0.025."""
    request = TextToImage(prompt="a cat", width=512, height=512)
    assert fal_engine(fal).estimate_cost(request) == pytest.approx(0.025)


# -- the time limit ------------------------------------------------------------------------------------------
def test_a_runaway_fal_upscale_is_cancelled_at_its_limit_and_bills_no_more_than_estimated(
    fal: FalServer,
) -> None:
    fal.pending_polls = 10**9  # it never finishes by itself
    engine = fal_engine(fal, max_billed_seconds=0.2)
    request = REQUESTS["upscale_2x"]
    ctx = LocalContext()
    with pytest.raises(ProviderError, match="FLENWHEEL_REMOTE_MAX_BILLED_SECONDS") as caught:
        engine.generate(request, ctx)

    request_id = ctx.known_remote_id() or ""
    assert not caught.value.transient and fal.cancels == [request_id]
    billed = fal.billed_usd(request_id)
    assert 0 < billed <= engine.estimate_cost(request)
    fal_engine(fal).client.status("fal-ai/esrgan", request_id)  # time passes on the server…
    assert fal.billed_usd(request_id) == billed  # … and the bill stays


def test_a_runaway_replicate_upscale_is_cancelled_at_its_limit(replicate: ReplicateServer) -> None:
    replicate.pending_polls = 10**9
    engine = replicate_engine(replicate, max_billed_seconds=0.2)
    request = REQUESTS["upscale_2x"]
    ctx = LocalContext()
    with pytest.raises(ProviderError, match="FLENWHEEL_REMOTE_MAX_BILLED_SECONDS"):
        engine.generate(request, ctx)

    prediction_id = ctx.known_remote_id() or ""
    assert replicate.cancels == [prediction_id]
    assert replicate.predictions[prediction_id].status == "canceled"
    billed = replicate.billed_usd(prediction_id)
    assert 0 < billed <= engine.estimate_cost(request)
    replicate_engine(replicate).client.prediction(prediction_id)
    assert replicate.billed_usd(prediction_id) == billed


# -- cancel --------------------------------------------------------------------------------------------------
def test_cancel_reaches_fal_and_stops_the_per_second_bill(fal: FalServer) -> None:
    fal.pending_polls = 10**9
    ctx = CancelAtCheck(at=4)  # submitted, then cancelled while it runs
    with pytest.raises(Cancelled):
        fal_engine(fal).generate(REQUESTS["upscale_4x"], ctx)

    request_id = ctx.known_remote_id() or ""
    assert fal.cancels == [request_id]
    billed = fal.billed_usd(request_id)
    fal_engine(fal).client.status("fal-ai/esrgan", request_id)
    assert fal.billed_usd(request_id) == billed


def test_cancel_reaches_fal_and_a_per_image_request_bills_nothing(fal: FalServer) -> None:
    fal.pending_polls = 10**9
    ctx = CancelOnProgress()
    with pytest.raises(Cancelled):
        fal_engine(fal).generate(REQUESTS["text_to_image"], ctx)

    request_id = ctx.known_remote_id() or ""
    assert fal.cancels == [request_id] and fal.billed_usd(request_id) == 0


def test_cancel_reaches_replicate_and_stops_the_bill(replicate: ReplicateServer) -> None:
    replicate.pending_polls = 10**9
    ctx = CancelOnProgress()
    with pytest.raises(Cancelled):
        replicate_engine(replicate).generate(REQUESTS["identity_reference"], ctx)  # billed per second

    prediction_id = ctx.known_remote_id() or ""
    assert replicate.cancels == [prediction_id]
    assert replicate.predictions[prediction_id].status == "canceled"
    billed = replicate.billed_usd(prediction_id)
    replicate_engine(replicate).client.prediction(prediction_id)
    assert replicate.billed_usd(prediction_id) == billed


def test_a_request_left_running_keeps_billing(fal: FalServer) -> None:
    """The servers' bills are live: what the cancel tests stop does grow when nobody cancels."""
    fal.pending_polls = 10**9
    client = fal_engine(fal).client
    request_id = client.submit("fal-ai/esrgan", {"image_url": "data:image/png;base64,", "scale": 2})
    client.status("fal-ai/esrgan", request_id)
    client.status("fal-ai/esrgan", request_id)
    first = fal.billed_usd(request_id)
    client.status("fal-ai/esrgan", request_id)
    assert fal.billed_usd(request_id) > first


# -- the flag the router reads -------------------------------------------------------------------------------
def test_every_engine_and_trainer_says_whether_it_bills(tmp_path: Path) -> None:
    settings = Settings(
        project=tmp_path,
        fal_key="k",  # type: ignore[arg-type]
        replicate_api_token="r8",  # type: ignore[arg-type]
        replicate_destination="alice/maya-lora",
        comfyui_url="http://127.0.0.1:9",
    )
    engines = ProviderRegistry.from_settings(settings).all()
    trainers = TrainerRegistry.from_settings(settings).all()
    assert all(isinstance(getattr(each, "paid", None), bool) for each in [*engines, *trainers])
    assert {engine.id for engine in engines if engine.paid} == {"fal", "replicate"}
    assert {trainer.id for trainer in trainers if trainer.paid} == {"fal", "replicate"}


def test_a_zero_price_for_a_paid_engine_is_refused_before_anything_is_sent(
    fal: FalServer, replicate: ReplicateServer, tmp_path: Path
) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text(
        "fal:\n  fal-ai/flux/dev: {per_image: 0}\nreplicate:\n  black-forest-labs/flux-dev: {per_image: 0}\n"
    )
    table = PriceTable.load(prices)
    request = TextToImage(prompt="a cat", width=512, height=512)
    for engine in (fal_engine(fal, prices=table), replicate_engine(replicate, prices=table)):
        with pytest.raises(ProviderError, match=r"is \$0, but .* bills every request") as caught:
            engine.estimate_cost(request)
        assert not caught.value.transient and "FLENWHEEL_PRICES" in str(caught.value)
    assert fal.submissions == [] and replicate.creations == []
