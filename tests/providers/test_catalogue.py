"""fal and Replicate as a catalogue: every endpoint's payload against its documented schema, the family
choice (`model="z-image-turbo"`), refusals, and real requests to the local fal protocol server."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from fal_server import FalServer
from PIL import Image

from flenwheel.families import FAMILIES
from flenwheel.providers.base import (
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
from flenwheel.providers.catalogue import ENDPOINTS, Endpoint, check_schema
from flenwheel.providers.fal import FalProvider
from flenwheel.providers.pricing import PriceTable
from flenwheel.providers.replicate import ReplicateProvider


def png(colour: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def request_for(entry: Endpoint, kind: str) -> GenerationRequest:
    common: dict[str, Any] = {"prompt": "a woman in a red coat", "model": entry.id, "seed": 5}
    if entry.max_loras:
        common["loras"] = (LoraRef(path="https://example.test/character.safetensors", strength=0.9),)
    sized = {**common, "width": 768, "height": 1344}
    if kind == "text_to_image":
        return TextToImage(**sized)
    if kind == "image_to_image":
        return ImageToImage(**sized, image=png((200, 100, 50)), strength=0.6)
    if kind == "inpaint":
        return Inpaint(**sized, image=png((200, 100, 50)), mask=png((255, 255, 255)))
    if kind == "identity_reference":
        common.pop("loras", None)
        return IdentityReference(
            **{**sized, "loras": ()}, references=(png((10, 20, 30)),), identity_strength=0.9
        )
    return Upscale(image=png((1, 2, 3)), factor=2, model=entry.id)


@pytest.fixture(scope="module")
def engines() -> dict[str, Any]:
    return {"fal": FalProvider("key"), "replicate": ReplicateProvider("token")}


def test_every_endpoints_payload_fits_its_documented_schema(engines: dict[str, Any]) -> None:
    checked = 0
    for entry in ENDPOINTS:
        for kind in sorted(entry.kinds):
            request = request_for(entry, kind)
            sent_to, payload = engines[entry.service].payload(request)
            assert sent_to == entry.id
            assert check_schema(entry, payload) == [], (entry.id, kind, payload)
            if entry.size == "aspect_ratio" and kind == "text_to_image":
                assert payload["aspect_ratio"] == "9:16"  # 768×1344, the endpoint's own way
            if entry.size == "image_size" and kind != "upscale":
                assert payload["image_size"] == {"width": 768, "height": 1344}
            if entry.images_as_list and kind == "image_to_image":
                images = payload.get("image_urls") or payload.get("image") or payload.get("image_input")
                assert isinstance(images, list) and len(images) == 1
            assert engines[entry.service].estimate_cost(request) > 0  # every endpoint has a price
            checked += 1
    assert checked >= 30


def test_a_family_picks_the_services_endpoint_for_the_kind(engines: dict[str, Any]) -> None:
    fal, replicate = engines["fal"], engines["replicate"]
    assert fal.payload(TextToImage(prompt="x", model="z-image-turbo"))[0] == "fal-ai/z-image/turbo"
    lora = (LoraRef(path="https://example.test/maya.safetensors"),)
    assert (
        fal.payload(TextToImage(prompt="x", model="z-image-turbo", loras=lora))[0]
        == "fal-ai/z-image/turbo/lora"
    )
    studio = TextToImage(prompt="x", model="flux-dev", steps=12, guidance=7.0, tier="draft")
    assert (
        fal.payload(studio)[1]["num_inference_steps"] == 20
        and fal.payload(studio)[1]["guidance_scale"] == 3.5
    )
    turbo = fal.payload(TextToImage(prompt="x", model="z-image-turbo", steps=12, tier="hq"))[1]
    assert turbo["num_inference_steps"] == 9 and "guidance_scale" not in turbo
    edit = ImageToImage(prompt="turn her head", image=png((1, 1, 1)), model="qwen-image-edit-2509")
    assert fal.payload(edit)[0] == "fal-ai/qwen-image-edit-plus"
    assert replicate.payload(edit)[0] == "qwen/qwen-image-edit-plus"
    with pytest.raises(ProviderError, match="fal has no z-image-turbo endpoint for inpaint"):
        fal.estimate_cost(
            Inpaint(prompt="x", image=png((1, 1, 1)), mask=png((9, 9, 9)), model="z-image-turbo")
        )
    assert {e.family for e in ENDPOINTS} - {None} <= set(FAMILIES)


def test_unknown_endpoints_are_refused_with_the_list_unless_raw(engines: dict[str, Any]) -> None:
    fal = engines["fal"]
    with pytest.raises(ProviderError) as raised:
        fal.estimate_cost(TextToImage(prompt="x", model="fal-ai/flux-realism"))
    assert not raised.value.transient
    assert "fal-ai/z-image/turbo" in str(raised.value) and "raw:fal-ai/flux-realism" in str(raised.value)
    endpoint, payload = fal.payload(TextToImage(prompt="x", model="raw:fal-ai/flux-realism", width=512))
    assert endpoint == "fal-ai/flux-realism" and payload["image_size"] == {"width": 512, "height": 512}
    # A kind the named endpoint does not do (the studio's identity mode with a text model) runs on the
    # kind's own FLUX endpoint, as it did before the catalogue.
    inpaint = Inpaint(prompt="x", image=png((1, 1, 1)), mask=png((9, 9, 9)), model="fal-ai/flux/dev")
    assert fal.payload(inpaint)[0] == "fal-ai/flux-lora/inpainting"
    with pytest.raises(ProviderError, match="has no input for loras"):
        fal.payload(
            TextToImage(prompt="x", model="fal-ai/flux/dev", loras=(LoraRef(path="https://e.test/a"),))
        )
    with pytest.raises(ProviderError, match="not in flenwheel's replicate catalogue"):
        engines["replicate"].estimate_cost(TextToImage(prompt="x", model="someone/sdxl-nsfw"))


@pytest.fixture
def fal_server() -> Iterator[FalServer]:
    running = FalServer().start()
    yield running
    running.stop()


def test_z_image_and_qwen_edit_run_on_the_fal_protocol_server(fal_server: FalServer) -> None:
    provider = FalProvider(
        fal_server.key,
        queue_url=fal_server.url,
        rest_url=fal_server.url,
        poll_interval=0.01,
        sleep=fal_server.waits.append,
        prices=PriceTable.load(),
    )
    made = provider.generate(
        TextToImage(prompt="a woman", model="z-image-turbo", width=1024, height=1024), LocalContext()
    )
    edited = provider.generate(
        ImageToImage(
            prompt="evening light",
            image=png((200, 120, 80)),
            model="qwen-image-edit-2509",
            width=512,
            height=512,
        ),
        LocalContext(),
    )

    assert made.model == "fal-ai/z-image/turbo" and (made.images[0].width, made.images[0].height) == (
        1024,
        1024,
    )
    assert edited.model == "fal-ai/qwen-image-edit-plus"
    sent = {request.endpoint: request.arguments for request in fal_server.requests.values()}
    assert "guidance_scale" not in sent["fal-ai/z-image/turbo"]  # the endpoint has none: not sent
    assert len(sent["fal-ai/qwen-image-edit-plus"]["image_urls"]) == 1
    for request in fal_server.requests.values():  # recorded = billed by the server
        cost = made.cost_usd if request.endpoint == "fal-ai/z-image/turbo" else edited.cost_usd
        assert cost == pytest.approx(fal_server.billed_usd(request.id))
