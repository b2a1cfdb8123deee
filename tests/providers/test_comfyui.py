"""The ComfyUI provider against a real ComfyUI 0.3.75 server on loopback (see comfyui_server.py).

Model-free workflows (LoadImage → ImageScale/ImageInvert/ImageCompositeMasked → SaveImage) prove the client:
upload, one execution per prompt_id however often it is retried, progress, download, errors and cancel.
The last tests run a real KSampler + LoraLoader on a random SD1.5-architecture checkpoint at 64 px.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from comfyui_server import ComfyUIServer, TinySD15
from PIL import Image

from flenwheel.config import Settings
from flenwheel.providers.base import (
    Cancelled,
    Capability,
    IdentityReference,
    ImageToImage,
    Inpaint,
    LocalContext,
    LoraRef,
    ProviderError,
    TextToImage,
    Upscale,
)
from flenwheel.providers.comfyui import ComfyUIProvider
from flenwheel.providers.comfyui_client import ComfyUIClient, WorkflowRun

from patience import HANG_S


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def gradient(width: int = 64, height: int = 48) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1)


def invert_workflow(image: str, width: int = 128, height: int = 96) -> dict[str, Any]:
    return {
        "image": {"class_type": "LoadImage", "inputs": {"image": image}},
        "scaled": {
            "class_type": "ImageScale",
            "inputs": {
                "image": ["image", 0],
                "upscale_method": "nearest-exact",
                "width": width,
                "height": height,
                "crop": "disabled",
            },
        },
        "inverted": {"class_type": "ImageInvert", "inputs": {"image": ["scaled", 0]}},
        "save": {
            "class_type": "SaveImage",
            "inputs": {"filename_prefix": "test/invert", "images": ["inverted", 0]},
        },
    }


def slow_workflow(image: str, nodes: int = 8) -> dict[str, Any]:
    """Several seconds of lanczos rescaling at 3072 px, checked for interrupts between nodes."""
    workflow: dict[str, Any] = {"image": {"class_type": "LoadImage", "inputs": {"image": image}}}
    previous = "image"
    for index in range(nodes):
        workflow[f"big_{index}"] = {
            "class_type": "ImageScale",
            "inputs": {
                "image": [previous, 0],
                "upscale_method": "lanczos",
                "width": 3072 - 8 * index,
                "height": 3072,
                "crop": "disabled",
            },
        }
        previous = f"big_{index}"
    workflow["small"] = {
        "class_type": "ImageScale",
        "inputs": {
            "image": [previous, 0],
            "upscale_method": "area",
            "width": 64,
            "height": 64,
            "crop": "disabled",
        },
    }
    workflow["save"] = {
        "class_type": "SaveImage",
        "inputs": {"filename_prefix": "test/slow", "images": ["small", 0]},
    }
    return workflow


class RecordingContext(LocalContext):
    """A LocalContext that records progress and can cancel itself when a condition is met."""

    def __init__(
        self,
        cancel_when: Callable[[list[tuple[int, int]]], bool] | None = None,
        cancel_at_check: int | None = None,
    ) -> None:
        super().__init__()
        self.calls: list[tuple[int, int]] = []
        self.started = threading.Event()  # the server reported progress: the prompt is on it
        self._cancel_when = cancel_when
        self._cancel_at_check = cancel_at_check
        self.checks = 0

    def cancelled(self) -> bool:
        self.checks += 1
        if self._cancel_at_check is not None and self.checks >= self._cancel_at_check:
            self.cancel()
        return super().cancelled()

    def progress(self, done: int, total: int) -> None:
        self.calls.append((done, total))
        self.started.set()
        if self._cancel_when is not None and self._cancel_when(self.calls):
            self.cancel()


@pytest.fixture
def client(comfyui_server: ComfyUIServer) -> ComfyUIClient:
    return ComfyUIClient(comfyui_server.url, timeout_s=HANG_S, request_timeout_s=HANG_S)


def history_outcome(client: ComfyUIClient, prompt_id: str) -> str | None:
    entry = client.history(prompt_id)
    if entry is None:
        return None
    kinds = [kind for kind, _ in entry["status"]["messages"]]
    return next(kind for kind in reversed(kinds) if kind.startswith("execution_"))


# --- the client, on model-free workflows --------------------------------------------------------------


def test_uploads_runs_and_downloads_with_progress(client: ComfyUIClient) -> None:
    source = gradient()
    ctx = RecordingContext()

    run = client.run(invert_workflow(client.upload_image(png(source))), ctx)

    assert ctx.known_remote_id() == run.prompt_id and run.queued
    (output,) = run.images
    expected = 255 - np.repeat(np.repeat(source, 2, axis=0), 2, axis=1)  # 2× nearest, inverted
    assert pixels(output).shape == (96, 128, 3)
    assert np.abs(pixels(output) - expected).max() <= 1  # SaveImage truncates float → uint8
    assert run.engine_seconds is not None and 0 <= run.engine_seconds < 60
    dones = [done for done, _ in ctx.calls]
    assert dones == sorted(dones) and ctx.calls[-1][0] == ctx.calls[-1][1] == 4  # four nodes, all done


def test_a_known_prompt_id_is_never_queued_again(
    client: ComfyUIClient, comfyui_server: ComfyUIServer
) -> None:
    workflow = invert_workflow(client.upload_image(png(gradient(40, 40))), 80, 80)
    first = client.run(workflow, LocalContext())

    retry = LocalContext()
    retry.remember_remote_id(first.prompt_id)  # a restarted job finds the id it persisted
    mark = comfyui_server.log_size()
    again = client.run(workflow, retry)

    assert not again.queued and again.prompt_id == first.prompt_id
    assert again.images == first.images
    assert "got prompt" not in comfyui_server.log_since(mark)


def test_a_retry_while_the_prompt_runs_waits_for_it(
    client: ComfyUIClient, comfyui_server: ComfyUIServer
) -> None:
    workflow = slow_workflow(client.upload_image(png(gradient(64, 60))), nodes=4)  # own image: no cache hits
    first_ctx = RecordingContext()
    mark = comfyui_server.log_size()
    results: list[WorkflowRun] = []
    worker = threading.Thread(target=lambda: results.append(client.run(workflow, first_ctx)))
    worker.start()
    assert first_ctx.started.wait(HANG_S)  # as if the worker had died here, mid-run

    retry = LocalContext()
    retry.remember_remote_id(first_ctx.known_remote_id() or "")
    resumed = client.run(workflow, retry)
    worker.join(HANG_S)

    assert not resumed.queued and results[0].queued
    assert resumed.images == results[0].images
    log = comfyui_server.log_since(mark)
    assert log.count("got prompt") == 1 and log.count("Prompt executed") == 1


def test_an_id_the_server_never_saw_is_queued_under_that_id(client: ComfyUIClient) -> None:
    ctx = LocalContext()
    ctx.remember_remote_id("0f5a3b9e-1c2d-4e5f-8a9b-0c1d2e3f4a5b")
    workflow = invert_workflow(client.upload_image(png(gradient(32 + 8, 64))), 80, 128)

    run = client.run(workflow, ctx)

    assert run.queued and run.prompt_id == "0f5a3b9e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"


def test_node_errors_become_a_clear_permanent_error(client: ComfyUIClient) -> None:
    with pytest.raises(ProviderError) as raised:
        client.run(invert_workflow("flenwheel/no-such-image.png"), LocalContext())

    assert not raised.value.transient
    assert "no-such-image.png" in str(raised.value) and "LoadImage" in str(raised.value)


def test_execution_errors_become_a_clear_permanent_error(client: ComfyUIClient) -> None:
    not_an_image = client.upload_image(b"this is text, not a PNG")

    with pytest.raises(ProviderError) as raised:
        client.run(invert_workflow(not_an_image), LocalContext())

    assert not raised.value.transient
    assert "LoadImage (node image) failed" in str(raised.value)


def test_cancel_interrupts_the_running_prompt(client: ComfyUIClient) -> None:
    workflow = slow_workflow(client.upload_image(png(gradient(64, 62))), nodes=12)  # own image: no cache hits
    ctx = RecordingContext(cancel_when=lambda calls: calls[-1][0] >= 2)  # two nodes in

    with pytest.raises(Cancelled):
        client.run(workflow, ctx)

    prompt_id = ctx.known_remote_id() or ""
    running, pending = client.queued_ids()
    assert prompt_id not in running | pending
    assert history_outcome(client, prompt_id) == "execution_interrupted"
    assert (client.history(prompt_id) or {}).get("outputs") == {}


def test_cancel_takes_a_waiting_prompt_off_the_queue(client: ComfyUIClient) -> None:
    image = client.upload_image(png(gradient(64, 58)))  # own image: the blocker must really run
    blocker = RecordingContext()
    worker = threading.Thread(target=lambda: client.run(slow_workflow(image, nodes=4), blocker))
    worker.start()
    assert blocker.started.wait(HANG_S)
    waiting = RecordingContext(cancel_at_check=2)  # the first check is before queueing; then it waits

    with pytest.raises(Cancelled):
        client.run(invert_workflow(image), waiting)
    worker.join(HANG_S)

    prompt_id = waiting.known_remote_id() or ""
    assert prompt_id not in set().union(*client.queued_ids())
    assert client.history(prompt_id) is None  # never ran


def test_a_job_cancelled_before_it_starts_queues_nothing(
    client: ComfyUIClient, comfyui_server: ComfyUIServer
) -> None:
    ctx = LocalContext()
    ctx.cancel()
    mark = comfyui_server.log_size()

    with pytest.raises(Cancelled):
        client.run(invert_workflow("flenwheel/anything.png"), ctx)

    assert "got prompt" not in comfyui_server.log_since(mark)


def test_a_cancelled_job_retried_runs_again(client: ComfyUIClient) -> None:
    # An image no other test uses: ComfyUI caches node outputs across prompts, and a cached chain would
    # finish before the cancel could land.
    image = client.upload_image(png(gradient(72, 56)))
    ctx = RecordingContext(cancel_when=lambda calls: calls[-1][0] >= 1)
    with pytest.raises(Cancelled):
        client.run(slow_workflow(image, nodes=3), ctx)

    retry = RecordingContext()
    retry.remember_remote_id(ctx.known_remote_id() or "")
    run = client.run(slow_workflow(image, nodes=3), retry)

    assert run.queued and history_outcome(client, run.prompt_id) == "execution_success"


def test_an_unreachable_server_is_a_transient_error() -> None:
    client = ComfyUIClient("http://127.0.0.1:9")  # discard port: nothing listens

    with pytest.raises(ProviderError) as raised:
        client.run(invert_workflow("x.png"), LocalContext())

    assert raised.value.transient and "127.0.0.1:9" in str(raised.value)


# --- the provider ---------------------------------------------------------------------------------------


def test_from_settings_needs_a_url() -> None:
    assert ComfyUIProvider.from_settings(Settings(comfyui_url=None)) is None
    provider = ComfyUIProvider.from_settings(Settings(comfyui_url="http://127.0.0.1:8188"))
    assert provider is not None and provider.id == "comfyui" and provider.allows_nsfw
    assert Capability.LORA in provider.capabilities
    assert provider.estimate_cost(TextToImage(prompt="x", count=4)) == 0.0


def test_identity_reference_names_the_custom_nodes_it_needs(comfyui_server: ComfyUIServer) -> None:
    provider = ComfyUIProvider(comfyui_server.url, models_dir=comfyui_server.models_dir)
    request = IdentityReference(
        prompt="a portrait", references=(png(gradient(64, 64)),), model="any.safetensors"
    )

    with pytest.raises(ProviderError) as raised:
        provider.generate(request, LocalContext())

    assert not raised.value.transient and "ComfyUI_IPAdapter_plus" in str(raised.value)


def test_a_lora_the_server_lacks_is_a_clear_error(comfyui_server: ComfyUIServer, tmp_path: Path) -> None:
    provider = ComfyUIProvider(comfyui_server.url)  # no models_dir: LoRAs must already be on the server
    request = TextToImage(
        prompt="x", model="any.safetensors", loras=(LoraRef(path=str(tmp_path / "me.safetensors")),)
    )

    with pytest.raises(ProviderError) as raised:
        provider.generate(request, LocalContext())

    assert "me.safetensors" in str(raised.value) and "FLENWHEEL_COMFYUI_MODELS_DIR" in str(raised.value)


def tiny_upscaler(path: Path) -> Path:
    """A RealESRGAN-Compact ×4 model whose last layer is zero: it upscales by nearest-neighbour exactly."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(7)
    features = 8
    weights = {
        "body.0.weight": rng.normal(0, 0.1, (features, 3, 3, 3)),
        "body.0.bias": np.zeros(features),
        "body.1.weight": np.full(features, 0.25),
        "body.2.weight": rng.normal(0, 0.1, (features, features, 3, 3)),
        "body.2.bias": np.zeros(features),
        "body.3.weight": np.full(features, 0.25),
        "body.4.weight": np.zeros((3 * 16, features, 3, 3)),
        "body.4.bias": np.zeros(3 * 16),
    }
    save_file({key: value.astype(np.float32) for key, value in weights.items()}, str(path))
    return path


def test_upscale_with_a_model_file_placed_on_the_server(
    comfyui_server: ComfyUIServer, tmp_path: Path
) -> None:
    provider = ComfyUIProvider(comfyui_server.url, models_dir=comfyui_server.models_dir)
    source = gradient(64, 64)
    model = tiny_upscaler(tmp_path / "tiny-x4.safetensors")

    result = provider.generate(Upscale(image=png(source), factor=2, model=str(model)), LocalContext())

    (image,) = result.images
    assert (image.width, image.height) == (128, 128)
    assert result.model.startswith("flenwheel/tiny-x4-") and result.cost_usd == 0.0
    halved = pixels(image.data).reshape(64, 2, 64, 2, 3).mean(axis=(1, 3))
    assert np.abs(halved - source).mean() < 4  # the upscaled image is the source, twice as large


# --- a real KSampler + LoraLoader on a random SD1.5-architecture checkpoint ----------------------------


@pytest.fixture(scope="module")
def sd15_provider(comfyui_server: ComfyUIServer, tiny_sd15: TinySD15) -> ComfyUIProvider:
    return ComfyUIProvider(comfyui_server.url, models_dir=comfyui_server.models_dir, checkpoint=None)


def sd15_request(tiny_sd15: TinySD15, strength: float | None) -> TextToImage:
    loras = () if strength is None else (LoraRef(path=str(tiny_sd15.lora), strength=strength),)
    return TextToImage(
        prompt="a portrait photo of a person",
        negative="blurry",
        model=str(tiny_sd15.checkpoint),
        loras=loras,
        width=64,
        height=64,
        steps=3,
        guidance=5.0,
        seed=42,
    )


def test_ksampler_with_a_kohya_lora_changes_with_strength(
    sd15_provider: ComfyUIProvider, tiny_sd15: TinySD15, comfyui_server: ComfyUIServer
) -> None:
    mark = comfyui_server.log_size()
    without = sd15_provider.generate(sd15_request(tiny_sd15, None), LocalContext())
    off = sd15_provider.generate(sd15_request(tiny_sd15, 0.0), LocalContext())
    ctx = RecordingContext()
    full = sd15_provider.generate(sd15_request(tiny_sd15, 1.0), ctx)
    load_log = comfyui_server.log_since(mark)  # the checkpoint's load and the LoRA's first application

    for unloaded in ("lora key not loaded", "unet missing", "clip missing", "Missing VAE keys"):
        assert unloaded not in load_log, load_log[-3000:]
    images = [pixels(result.images[0].data) for result in (full, off, without)]
    assert all(image.shape == (64, 64, 3) for image in images)
    assert np.abs(images[0] - images[1]).mean() > 1  # the LoRA changes the picture…
    assert np.array_equal(images[1], images[2])  # …and at strength 0 it is as if it were not there
    assert full.images[0].seed == 42 and full.engine_seconds and full.model.startswith("flenwheel/tiny-sd15-")
    assert any(0 < done < total for done, total in ctx.calls)  # sampler steps arrive as progress


def test_inpaint_keeps_every_pixel_outside_the_mask(
    sd15_provider: ComfyUIProvider, tiny_sd15: TinySD15
) -> None:
    source = gradient(64, 64)
    mask = np.zeros((64, 64, 3))
    mask[:, :32] = 255  # redraw the left half only
    request = Inpaint(
        prompt="a face",
        image=png(source),
        mask=png(mask),
        model=str(tiny_sd15.checkpoint),
        width=64,
        height=64,
        steps=2,
        seed=3,
        count=2,
    )

    result = sd15_provider.generate(request, LocalContext())

    assert len(result.images) == 2
    for image in result.images:
        out = pixels(image.data)
        assert np.abs(out[:, 32:] - source[:, 32:]).max() <= 1  # kept
        assert np.abs(out[:, :32] - source[:, :32]).mean() > 5  # redrawn


def test_image_to_image_redraws_at_the_requested_size(
    sd15_provider: ComfyUIProvider, tiny_sd15: TinySD15
) -> None:
    request = ImageToImage(
        prompt="a face",
        image=png(gradient(96, 80)),
        model=str(tiny_sd15.checkpoint),
        width=64,
        height=64,
        steps=2,
        strength=0.6,
        seed=5,
    )

    result = sd15_provider.generate(request, LocalContext())

    (image,) = result.images
    assert (image.width, image.height) == (64, 64) and image.seed == 5


def test_a_pose_skeleton_steers_the_sampler_through_controlnet_apply_advanced(
    comfyui_server: ComfyUIServer, tiny_sd15: TinySD15
) -> None:
    """ControlNetLoader + ControlNetApplyAdvanced on the real server with a random SD1.5 ControlNet: the
    skeleton changes the drawing, strength 0 draws as without it; no ControlNet configured, no capability.
    (That different skeletons draw differently is shown on the local engine, test_diffusers_local.py.)"""
    from comfyui_server import ensure_tiny_controlnet

    from flenwheel.poses.skeleton import render_skeleton
    from flenwheel.providers.base import Capability, ControlImage, ControlType

    provider = ComfyUIProvider(
        comfyui_server.url,
        models_dir=comfyui_server.models_dir,
        controlnets={ControlType.POSE: str(ensure_tiny_controlnet())},
    )
    assert Capability.CONTROLNET in provider.capabilities
    assert Capability.CONTROLNET not in ComfyUIProvider(comfyui_server.url).capabilities
    plain = sd15_request(tiny_sd15, None)
    pose = ControlImage(image=render_skeleton("t_pose", 64, 64), strength=1.0)
    steered = provider.generate(plain.model_copy(update={"control": pose}), LocalContext())
    off = provider.generate(
        plain.model_copy(update={"control": pose.model_copy(update={"strength": 0.0})}), LocalContext()
    )
    without = provider.generate(plain, LocalContext())
    images = [pixels(result.images[0].data) for result in (steered, off, without)]
    assert np.abs(images[0] - images[2]).mean() > 1  # measured 8.5 (64 px, 3 steps)
    assert np.abs(images[1] - images[2]).max() <= 1
    workflow, _model = provider.workflow(plain.model_copy(update={"control": pose}), 42)
    assert workflow.nodes["sampler"]["inputs"]["positive"] == ["control", 0]
    assert workflow.nodes["control"]["class_type"] == "ControlNetApplyAdvanced"
