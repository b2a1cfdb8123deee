"""LoRA files users can load anywhere: kohya-style keys with `ss_*` and `modelspec.*` metadata.

Keys follow kohya's diffusers-named layout (`lora_unet_down_blocks_1_attentions_0_…_to_q.lora_down.weight`,
`.lora_up.weight`, `.alpha`; `lora_te_…` for an SD1 text encoder, `lora_te1_`/`lora_te2_` for SDXL's two), which
diffusers `load_lora_weights`, ComfyUI's `LoraLoader`, A1111 and InvokeAI all read. `alpha` holds the network
alpha, so loaders scale by alpha/rank exactly as the trainer did.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flenwheel.domain import Frozen
from flenwheel.trainers.base import ModelFamily, TrainingSpec

BASE_MODEL_VERSION = {"sd": "sd_v1", "sdxl": "sdxl_base_v1-0", "flux": "flux1"}
ARCHITECTURE = {
    "sd": "stable-diffusion-v1/lora",
    "sdxl": "stable-diffusion-xl-v1-base/lora",
    "flux": "flux-1-dev/lora",
}
IMPLEMENTATION = {
    "sd": "https://github.com/Stability-AI/generative-models",
    "sdxl": "https://github.com/Stability-AI/generative-models",
    "flux": "https://github.com/black-forest-labs/flux",
}


class LoraFileFacts(Frozen):
    """What a checkpoint file records about the run that made it (beyond the spec)."""

    output_name: str
    base_model_name: str  # "tiny" or the checkpoint's file/folder name
    started_at: datetime
    step: int
    epoch: int
    num_images: int
    captions: tuple[str, ...]
    ema: bool = False


def kohya_key(module: str, prefix: str) -> str:
    """`down_blocks.1.attentions.0…to_out.0` + `lora_unet` → `lora_unet_down_blocks_1_attentions_0_…_to_out_0`."""
    return f"{prefix}_{module.replace('.', '_')}"


def kohya_tensors(
    modules: Mapping[str, tuple[Any, Any]], prefix: str, alpha: float, dtype: Any = None
) -> dict[str, Any]:
    """{module name: (lora_A weight, lora_B weight)} → kohya lora_down/lora_up/alpha tensors."""
    import torch

    tensors: dict[str, Any] = {}
    for module, (down, up) in modules.items():
        key = kohya_key(module, prefix)
        cast = dtype or down.dtype
        tensors[f"{key}.lora_down.weight"] = down.detach().to("cpu", cast).contiguous()
        tensors[f"{key}.lora_up.weight"] = up.detach().to("cpu", cast).contiguous()
        tensors[f"{key}.alpha"] = torch.tensor(float(alpha), dtype=cast)
    return tensors


def tag_frequency(captions: Sequence[str]) -> dict[str, int]:
    """kohya's ss_tag_frequency for one folder: comma-separated caption parts and how often each occurs."""
    counts: Counter[str] = Counter()
    for caption in captions:
        counts.update(part.strip() for part in caption.split(",") if part.strip())
    return dict(counts)


def tensors_sha256(tensors: Mapping[str, Any]) -> str:
    """The sha256 of the tensor data, independent of metadata (what kohya and modelspec call the model hash)."""
    from safetensors.torch import save

    blob = save(dict(sorted(tensors.items())))
    (header_length,) = struct.unpack("<Q", blob[:8])
    return "0x" + hashlib.sha256(blob[8 + header_length :]).hexdigest()


def lora_metadata(
    spec: TrainingSpec, facts: LoraFileFacts, tensors: Mapping[str, Any], family: ModelFamily
) -> dict[str, str]:
    """ss_* (kohya / A1111 / Civitai readers) and modelspec.* (Stability's model spec 1.0.0), all strings."""
    resolution = spec.resolution
    folder = f"{spec.repeats}_{spec.trigger}"
    now = datetime.now(UTC)
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(spec.rank),
        "ss_network_alpha": _number(spec.network_alpha),
        "ss_network_args": json.dumps({"target": "attention (to_q, to_k, to_v, to_out.0)"}),
        "ss_base_model_version": BASE_MODEL_VERSION[family],
        "ss_v2": "False",
        "ss_output_name": facts.output_name,
        "ss_sd_model_name": facts.base_model_name,
        "ss_training_started_at": _number(round(facts.started_at.timestamp(), 3)),
        "ss_training_finished_at": _number(round(now.timestamp(), 3)),
        "ss_steps": str(facts.step),
        "ss_epoch": str(facts.epoch),
        "ss_num_epochs": str(spec.epochs),
        "ss_max_train_steps": str(spec.max_steps or 0),
        "ss_num_train_images": str(facts.num_images * spec.repeats),
        "ss_num_reg_images": "0",
        "ss_learning_rate": _number(spec.learning_rate),
        "ss_unet_lr": _number(spec.learning_rate),
        "ss_text_encoder_lr": _number(spec.learning_rate if spec.train_text_encoder else 0.0),
        "ss_network_train_unet_only": str(not spec.train_text_encoder),
        "ss_optimizer": spec.optimizer,
        "ss_batch_size_per_device": str(spec.batch_size),
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_enable_bucket": str(spec.buckets),
        "ss_seed": str(spec.seed),
        "ss_ema": str(facts.ema),
        "ss_tag_frequency": json.dumps({folder: tag_frequency(facts.captions)}),
        "ss_dataset_dirs": json.dumps({folder: {"n_repeats": spec.repeats, "img_count": facts.num_images}}),
        "ss_training_comment": f"trained by flenwheel (local diffusers + PEFT); trigger: {spec.trigger}",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": ARCHITECTURE[family],
        "modelspec.implementation": IMPLEMENTATION[family],
        "modelspec.title": f"{facts.output_name} (step {facts.step})",
        "modelspec.author": "flenwheel",
        "modelspec.description": f"Character LoRA for '{spec.trigger}' on {facts.base_model_name}",
        "modelspec.date": now.strftime("%Y-%m-%dT%H:%M:%S"),
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.trigger_phrase": spec.trigger,
        "modelspec.prediction_type": "epsilon",
        "modelspec.hash_sha256": tensors_sha256(tensors),
        "modelspec.usage_hint": "strength 0.6-1.0",
    }
    return metadata


def write_lora_file(path: Path, tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> Path:
    """Write atomically: a reader never sees half a file (evaluation may pick it up the moment it lands)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    save_file(dict(tensors), str(partial), metadata=dict(metadata))
    os.replace(partial, path)
    return path


def read_lora_metadata(path: Path | str) -> dict[str, str]:
    """The metadata strings of a LoRA .safetensors (empty when it has none)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def read_lora_keys(path: Path | str) -> list[str]:
    """The tensor names in a LoRA .safetensors."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return list(handle.keys())


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
