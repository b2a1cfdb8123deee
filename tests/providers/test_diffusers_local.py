"""The local diffusers engine on the built-in tiny model: determinism, edits, inpaint, LoRA strength."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flenwheel.errors import InvalidInput
from flenwheel.providers.base import ImageToImage, Inpaint, LocalContext, LoraRef, ProviderError, TextToImage
from flenwheel.providers.diffusers_local import LocalDiffusersProvider
from flenwheel.providers.tiny_model import ensure_tiny_model

from photos import LISA


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def engine() -> LocalDiffusersProvider:
    return LocalDiffusersProvider()


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA made with PEFT on the tiny UNet, with non-zero up-weights so it changes the output."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipeline = StableDiffusionPipeline.from_pretrained(ensure_tiny_model())
    torch.manual_seed(0)
    pipeline.unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    )
    with torch.no_grad():
        for name, parameter in pipeline.unet.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    folder = tmp_path_factory.mktemp("lora")
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipeline.unet))
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=layers, weight_name="test_lora.safetensors"
    )
    return folder / "test_lora.safetensors"


def test_same_seed_same_pixels_and_progress(engine: LocalDiffusersProvider) -> None:
    seen: list[tuple[int, int]] = []
    request = TextToImage(prompt="photo of ohwx woman", seed=7, steps=3, width=64, height=64, count=2)
    first = engine.generate(request, LocalContext(lambda done, total: seen.append((done, total))))
    again = engine.generate(request, LocalContext())
    other = engine.generate(request.model_copy(update={"seed": 8}), LocalContext())
    assert [i.data for i in first.images] == [i.data for i in again.images]
    assert first.images[0].data != other.images[0].data and first.images[0].data != first.images[1].data
    assert [i.seed for i in first.images] == [7, 8]
    assert seen[-1] == (6, 6) and first.model == "tiny" and first.cost_usd == 0


def test_image_to_image_runs_as_much_of_the_schedule_as_the_strength_asks(
    engine: LocalDiffusersProvider,
) -> None:
    """The tiny model's random VAE cannot reconstruct a photo, so strength is checked where it acts: the
    number of denoising steps run (diffusers runs steps × strength of them)."""
    source = io.BytesIO()
    Image.open(LISA[0]).convert("RGB").resize((64, 64)).save(source, format="PNG")

    def steps_run(strength: float) -> int:
        seen: list[int] = []
        request = ImageToImage(
            prompt="x", image=source.getvalue(), strength=strength, steps=10, width=64, height=64, seed=1
        )
        engine.generate(request, LocalContext(lambda done, _total: seen.append(done)))
        return len(seen)

    assert (steps_run(0.2), steps_run(0.9)) == (2, 9)


def test_inpaint_keeps_everything_outside_the_mask(engine: LocalDiffusersProvider) -> None:
    source = Image.open(LISA[1]).convert("RGB").resize((64, 64))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    image_bytes, mask_bytes = io.BytesIO(), io.BytesIO()
    source.save(image_bytes, format="PNG")
    mask.save(mask_bytes, format="PNG")
    request = Inpaint(
        prompt="x",
        image=image_bytes.getvalue(),
        mask=mask_bytes.getvalue(),
        steps=4,
        width=64,
        height=64,
        seed=3,
    )
    result = pixels(engine.generate(request, LocalContext()).images[0].data)
    original = np.asarray(source, dtype=np.int16)
    outside = np.asarray(mask) == 0
    assert np.array_equal(result[outside], original[outside])
    assert np.abs(result[~outside] - original[~outside]).mean() > 5


def test_lora_strength_changes_the_output(engine: LocalDiffusersProvider, lora_file: Path) -> None:
    base = TextToImage(prompt="photo of ohwx woman", seed=11, steps=3, width=64, height=64)
    plain = pixels(engine.generate(base, LocalContext()).images[0].data)

    def with_lora(strength: float) -> np.ndarray:
        request = base.model_copy(update={"loras": (LoraRef(path=str(lora_file), strength=strength),)})
        return pixels(engine.generate(request, LocalContext()).images[0].data)

    half, full = with_lora(0.5), with_lora(1.0)
    assert np.abs(half - plain).mean() > 0.5 and np.abs(full - plain).mean() > np.abs(half - plain).mean()
    assert np.array_equal(
        pixels(engine.generate(base, LocalContext()).images[0].data), plain
    )  # unloaded after


def test_missing_lora_and_model_are_clear_errors(engine: LocalDiffusersProvider, tmp_path: Path) -> None:
    request = TextToImage(
        prompt="x", steps=1, width=64, height=64, loras=(LoraRef(path=str(tmp_path / "no.safetensors")),)
    )
    with pytest.raises(InvalidInput, match=r"LoRA file .* not found"):
        engine.generate(request, LocalContext())
    with pytest.raises(InvalidInput, match=r"model .* not found"):
        engine.generate(
            TextToImage(prompt="x", steps=1, width=64, height=64, model="/nope/model"), LocalContext()
        )


def test_a_pose_skeleton_steers_the_tiny_model_through_its_controlnet(engine: LocalDiffusersProvider) -> None:
    """The tiny model's random ControlNet: the skeleton changes the drawing, the same skeleton and seed give
    the same pixels, strength 0 is the drawing without control; image-to-image takes one too."""
    from flenwheel.poses.skeleton import render_skeleton
    from flenwheel.providers.base import Capability, ControlImage, required_capabilities

    plain = TextToImage(prompt="ohwx woman, full body", seed=5, steps=2, width=64, height=96)
    t_pose = ControlImage(image=render_skeleton("t_pose", 64, 96), strength=1.0)
    steered = plain.model_copy(update={"control": t_pose})
    assert required_capabilities(steered) == {Capability.TEXT_TO_IMAGE, Capability.CONTROLNET}
    base = pixels(engine.generate(plain, LocalContext()).images[0].data)
    first = pixels(engine.generate(steered, LocalContext()).images[0].data)
    again = pixels(engine.generate(steered, LocalContext()).images[0].data)
    seated = steered.model_copy(
        update={"control": t_pose.model_copy(update={"image": render_skeleton("seated", 64, 96)})}
    )
    other = pixels(engine.generate(seated, LocalContext()).images[0].data)
    off = steered.model_copy(update={"control": t_pose.model_copy(update={"strength": 0.0})})
    assert np.array_equal(first, again) and first.shape == (96, 64, 3)
    assert np.abs(first - base).mean() > 1 and np.abs(first - other).mean() > 1
    assert np.abs(pixels(engine.generate(off, LocalContext()).images[0].data) - base).max() <= 1
    edit = ImageToImage(
        prompt="ohwx woman", image=engine.generate(plain, LocalContext()).images[0].data, strength=0.6,
        seed=5, steps=2, width=64, height=96, control=t_pose,
    )  # fmt: skip
    assert engine.generate(edit, LocalContext()).images[0].width == 64
    with pytest.raises(ProviderError, match="no pose ControlNet for model"):
        LocalDiffusersProvider(model="tiny")._controlnet("/some/model", t_pose, None)
