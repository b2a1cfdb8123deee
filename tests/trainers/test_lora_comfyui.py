"""A LoRA trained by the local trainer on a random SD1.5-architecture checkpoint, in the real ComfyUI server.

Training the 860M-parameter UNet on a CPU is slow, so this trains two steps at 64 px (rank 4, UNet and text
encoder) — enough to write a real checkpoint whose every key ComfyUI's LoraLoader must place.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from comfyui_server import ComfyUIServer, TinySD15
from PIL import Image

from flenwheel.providers.base import LocalContext, LoraRef, TextToImage
from flenwheel.providers.comfyui import ComfyUIProvider
from flenwheel.trainers.base import LocalTrainingContext, TrainingInput, TrainingSpec
from flenwheel.trainers.local_lora import LocalLoraTrainer
from flenwheel.trainers.lora_file import read_lora_keys, read_lora_metadata

TrainingInputFactory = Callable[..., TrainingInput]


@pytest.fixture
def sd15_lora(tiny_sd15: TinySD15, lisa_input: TrainingInputFactory, model_cache: Path) -> Path:
    spec = TrainingSpec(
        trigger="ohwx woman",
        base_model=str(tiny_sd15.checkpoint),
        rank=4,
        resolution=64,
        epochs=1,
        max_steps=2,
        learning_rate=5e-2,
        seed=5,
        train_text_encoder=True,
    )
    result = LocalLoraTrainer(cache_root=model_cache).run(spec, lisa_input(count=2), LocalTrainingContext())
    assert [c.step for c in result.checkpoints] == [2]
    return result.checkpoints[-1].path


def test_comfyui_loads_every_key_of_a_trained_lora_and_the_strength_shows(
    sd15_lora: Path, tiny_sd15: TinySD15, comfyui_server: ComfyUIServer
) -> None:
    provider = ComfyUIProvider(comfyui_server.url, models_dir=comfyui_server.models_dir, checkpoint=None)

    def image(strength: float | None) -> np.ndarray:
        loras = () if strength is None else (LoraRef(path=str(sd15_lora), strength=strength),)
        request = TextToImage(
            prompt="a portrait photo of ohwx woman",
            model=str(tiny_sd15.checkpoint),
            loras=loras,
            width=64,
            height=64,
            steps=3,
            seed=42,
        )
        data = provider.generate(request, LocalContext()).images[0].data
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)

    mark = comfyui_server.log_size()
    full = image(1.0)  # strength 1 first: LoraLoader skips the file entirely at strength 0
    load_log = comfyui_server.log_since(mark)
    half, none = image(0.5), image(None)

    assert "lora key not loaded" not in load_log, load_log[-3000:]
    keys = read_lora_keys(sd15_lora)
    assert any(k.startswith("lora_te_") for k in keys) and any(k.startswith("lora_unet_") for k in keys)
    assert read_lora_metadata(sd15_lora)["ss_base_model_version"] == "sd_v1"
    assert np.abs(full - none).mean() > 1  # the LoRA changes the picture…
    assert np.abs(full - half).mean() > 0.5  # …and how much depends on the strength
