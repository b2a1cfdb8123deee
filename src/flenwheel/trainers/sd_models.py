"""Load a Stable-Diffusion-family model for LoRA training: the tiny model, a diffusers folder, or one SD1.5 file.

A single-file SD1.5 checkpoint (LDM layout) is converted here with SD1.5's own configs, so it loads with no
network access (diffusers' `from_single_file` would fetch those configs from the Hugging Face hub). SDXL is
read from a diffusers folder.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flenwheel.providers.tiny_model import TINY_MODEL_ID, TINY_VERSION, ensure_tiny_model
from flenwheel.trainers.base import ModelFamily, TrainerError

SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "layers_per_block": 2,
}
SD15_VAE = {
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 4,
    "layers_per_block": 2,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
SD15_TEXT: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}


@dataclass
class SdModel:
    """The parts of one loaded model that training needs."""

    family: ModelFamily
    name: str  # what the LoRA file records as its base model
    fingerprint: str  # changes when the weights do: part of every cache key
    unet: Any
    vae: Any
    text_encoders: list[Any]
    tokenizers: list[Any]
    scheduler: Any  # a DDPMScheduler with the model's noise schedule


def model_source(base_model: str, cache_root: Path | None) -> Path:
    if base_model == TINY_MODEL_ID:
        return ensure_tiny_model(cache_root)
    return Path(base_model).expanduser()


def model_fingerprint(base_model: str, source: Path) -> str:
    """tiny's version, or a hash of the files' names, sizes and modification times (cheap, changes on rewrite)."""
    if base_model == TINY_MODEL_ID:
        return TINY_VERSION
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    parts = [f"{p.relative_to(source.parent)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def load_sd_model(base_model: str, family: ModelFamily, cache_root: Path | None) -> SdModel:
    """Every part in float32 on the CPU, frozen and in eval mode; the caller moves what it trains."""
    from diffusers import DDPMScheduler

    source = model_source(base_model, cache_root)
    name = TINY_MODEL_ID if base_model == TINY_MODEL_ID else source.name
    fingerprint = model_fingerprint(base_model, source)
    if source.is_dir():
        unet, vae, encoders, tokenizers, scheduler_config = _from_folder(source, family)
    elif family == "sd":
        unet, vae, encoders, tokenizers, scheduler_config = _from_sd15_file(source)
    else:
        raise TrainerError("local", f"{source}: give {family} models as a diffusers folder, not one file")
    scheduler = DDPMScheduler.from_config(scheduler_config)
    for module in (unet, vae, *encoders):
        module.requires_grad_(False)
        module.eval()
    return SdModel(family, name, fingerprint, unet, vae, encoders, tokenizers, scheduler)


def _from_folder(source: Path, family: ModelFamily) -> tuple[Any, Any, list[Any], list[Any], Any]:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    try:
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet")
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae")
        encoders: list[Any] = [CLIPTextModel.from_pretrained(source, subfolder="text_encoder")]
        tokenizers: list[Any] = [CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")]
        if family == "sdxl":
            encoders.append(CLIPTextModelWithProjection.from_pretrained(source, subfolder="text_encoder_2"))
            tokenizers.append(CLIPTokenizer.from_pretrained(source, subfolder="tokenizer_2"))
        scheduler_config = DDPMScheduler.load_config(source, subfolder="scheduler")
    except (OSError, ValueError) as exc:
        raise TrainerError(
            "local",
            f"cannot load {source} as a diffusers {family} model: {exc}; give the folder that holds "
            "model_index.json (unet/, vae/, text_encoder/, tokenizer/, scheduler/)",
        ) from exc
    return unet, vae, encoders, tokenizers, scheduler_config


def _from_sd15_file(source: Path) -> tuple[Any, Any, list[Any], list[Any], Any]:
    """An LDM-layout SD1.5 .safetensors (model.diffusion_model.*, first_stage_model.*, cond_stage_model.*)."""
    import tempfile

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from flenwheel.providers.tiny_model import write_clip_tokenizer

    try:
        checkpoint = load_file(str(source))  # fp16 stays fp16 here: load_state_dict casts per tensor
    except (OSError, ValueError) as exc:
        raise TrainerError("local", f"cannot read {source} as a .safetensors checkpoint: {exc}") from exc
    if not any(key.startswith("model.diffusion_model.") for key in checkpoint):
        raise TrainerError(
            "local",
            f"{source} is not an SD1.5 checkpoint (no model.diffusion_model.* keys); "
            "give a diffusers folder instead",
        )
    unet: Any = UNet2DConditionModel(**SD15_UNET)
    _load(unet, convert_ldm_unet_checkpoint(checkpoint, dict(unet.config)), "UNet", source)
    vae: Any = AutoencoderKL(**SD15_VAE)
    vae_keys = {
        k[len("first_stage_model.") :]: v for k, v in checkpoint.items() if k.startswith("first_stage_model.")
    }
    if not any("down_blocks" in key for key in vae_keys):  # LDM layout; some files carry diffusers' already
        vae_keys = convert_ldm_vae_checkpoint(checkpoint, dict(vae.config))
    _load(vae, vae_keys, "VAE", source)
    text_encoder: Any = CLIPTextModel(CLIPTextConfig(**SD15_TEXT))
    text_keys = {}
    for key, value in checkpoint.items():
        if key.startswith("cond_stage_model.transformer."):
            name = key[len("cond_stage_model.transformer.") :]
            # transformers 5 names CLIPTextModel's weights without the `text_model.` prefix LDM files use
            if name.startswith("text_model.") and "text_model.embeddings.token_embedding.weight" not in (
                text_encoder.state_dict()
            ):
                name = name[len("text_model.") :]
            text_keys[name] = value
    _load(text_encoder, text_keys, "text encoder", source)
    with tempfile.TemporaryDirectory() as folder:
        write_clip_tokenizer(Path(folder))
        tokenizer = CLIPTokenizer.from_pretrained(folder)
    scheduler_config = {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon",
        "steps_offset": 1,
        "clip_sample": False,
    }
    return unet, vae, [text_encoder], [tokenizer], scheduler_config


def _load(module: Any, weights: dict[str, Any], part: str, source: Path) -> None:
    result = module.load_state_dict(weights, strict=False)
    missing = [key for key in result.missing_keys if not key.endswith("position_ids")]
    if missing:
        raise TrainerError(
            "local",
            f"{source}: the {part} lacks {len(missing)} weights (e.g. {missing[0]}); "
            "is it an SD1.5 checkpoint? For other models give a diffusers folder",
        )
