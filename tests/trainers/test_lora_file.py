"""A trained checkpoint is a LoRA file users can load anywhere: kohya keys, ss_*/modelspec metadata, diffusers."""

from __future__ import annotations

import io
import json
import logging
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from flenwheel.providers.base import LocalContext, LoraRef, TextToImage
from flenwheel.providers.diffusers_local import LocalDiffusersProvider
from flenwheel.providers.tiny_model import ensure_tiny_model
from flenwheel.trainers.base import LocalTrainingContext, TrainingInput, TrainingSpec
from flenwheel.trainers.local_lora import LocalLoraTrainer
from flenwheel.trainers.lora_file import read_lora_keys, read_lora_metadata

TrainingInputFactory = Callable[..., TrainingInput]
KOHYA_KEY = re.compile(r"lora_(unet|te)_[a-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)")
SPEC = TrainingSpec(
    trigger="ohwx woman",
    rank=4,
    alpha=2,
    resolution=64,
    epochs=1,
    seed=3,
    learning_rate=5e-2,
    train_text_encoder=True,
)


@pytest.fixture
def checkpoint(lisa_input: TrainingInputFactory, model_cache: Path) -> Path:
    result = LocalLoraTrainer(cache_root=model_cache).run(SPEC, lisa_input(), LocalTrainingContext())
    return result.checkpoints[-1].path


@pytest.fixture
def load_messages() -> Iterator[list[str]]:
    """Everything diffusers and PEFT log or warn while a LoRA loads (unexpected or missing keys land here)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    loggers = [logging.getLogger(name) for name in ("diffusers", "peft")]
    for logger in loggers:
        logger.addHandler(handler)
    messages: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield messages
        messages.extend(str(w.message) for w in caught)
    for logger in loggers:
        logger.removeHandler(handler)
    messages.extend(line for line in stream.getvalue().splitlines() if line.strip())


def test_keys_are_kohya_style_and_the_metadata_names_the_trigger(checkpoint: Path) -> None:
    keys = read_lora_keys(checkpoint)
    metadata = read_lora_metadata(checkpoint)
    tensors = load_file(str(checkpoint))

    assert keys and all(KOHYA_KEY.fullmatch(key) for key in keys), [
        k for k in keys if not KOHYA_KEY.fullmatch(k)
    ]
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj.") for k in keys)
    assert any(
        k.startswith("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.") for k in keys
    )
    assert {float(tensors[k]) for k in keys if k.endswith(".alpha")} == {
        2.0
    }  # the network alpha, not the rank
    assert {tensors[k].shape[0] for k in keys if k.endswith("lora_down.weight")} == {4}
    assert metadata["modelspec.trigger_phrase"] == "ohwx woman"
    assert metadata["modelspec.sai_model_spec"] == "1.0.0"
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert metadata["modelspec.hash_sha256"].startswith("0x")
    assert metadata["ss_network_module"] == "networks.lora"
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"]) == ("4", "2")
    assert (metadata["ss_steps"], metadata["ss_epoch"], metadata["ss_seed"]) == ("4", "1", "3")
    assert metadata["ss_base_model_version"] == "sd_v1" and metadata["ss_sd_model_name"] == "tiny"
    assert json.loads(metadata["ss_tag_frequency"]) == {
        "1_ohwx woman": {"ohwx woman": 4, "photo 0": 1, "photo 1": 1, "photo 2": 1, "photo 3": 1}
    }


def test_diffusers_loads_every_key_and_the_strength_changes_the_picture(
    checkpoint: Path, model_cache: Path, load_messages: list[str]
) -> None:
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(
        ensure_tiny_model(model_cache), safety_checker=None, requires_safety_checker=False
    )
    pipeline.load_lora_weights(str(checkpoint), adapter_name="character")

    loaded = [n for n, _ in [*pipeline.unet.named_parameters(), *pipeline.text_encoder.named_parameters()]]
    file_modules = {key.split(".")[0] for key in read_lora_keys(checkpoint)}
    assert sum(".lora_A." in name for name in loaded) == len(file_modules)  # every module in the file applied
    assert not [m for m in load_messages if re.search(r"unexpected|missing|not loaded|unused", m, re.I)]

    engine = LocalDiffusersProvider(cache_root=model_cache)

    def image(strength: float | None) -> np.ndarray:
        loras = () if strength is None else (LoraRef(path=str(checkpoint), strength=strength),)
        request = TextToImage(
            prompt="photo of ohwx woman", seed=11, steps=3, width=64, height=64, loras=loras
        )
        data = engine.generate(request, LocalContext()).images[0].data
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)

    half, full, none = image(0.5), image(1.0), image(None)
    assert np.abs(full - half).mean() > 0.5  # the strength the user picks shows in the pixels
    assert np.abs(half - none).mean() > 0.5
