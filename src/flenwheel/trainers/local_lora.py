"""The local trainer: diffusers + PEFT LoRA on the UNet's attention layers (and optionally the text encoder).

It trains the SD family here: the built-in tiny model (the default; CPU, seconds), a diffusers folder (SD1.5 or
SDXL) or a single-file SD1.5 checkpoint. VAE latents and text embeddings come from an on-disk cache
(latent_cache.py), so only the first epoch of the first run pays for the VAE and text encoder. Every step is
seeded from (seed, global step) and every epoch's order from (seed, epoch), so a run that is stopped and resumed
from `work_dir/state` ends with the same weights, bit for bit, as one that never stopped.

SDXL (diffusers folder) follows diffusers' own SDXL LoRA script and is untested here (no SDXL weights on this
machine). Flux is refused by `validate`: train it with ai-toolkit, kohya or fal.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from flenwheel.config import Settings
from flenwheel.providers.tiny_model import TINY_MODEL_ID, default_cache_root
from flenwheel.trainers.base import (
    DatasetFormat,
    TrainerError,
    TrainingContext,
    TrainingInput,
    TrainingResult,
    TrainingSpec,
    refuse_family,
)
from flenwheel.trainers.latent_cache import CacheStats

log = logging.getLogger(__name__)

TINY_MAX_RESOLUTION = 256


class LocalLoraTrainer:
    """diffusers + PEFT LoRA training in this process (CPU or CUDA); resumable, deterministic, cached."""

    id = "local"
    dataset_format: DatasetFormat = "images"
    trains = frozenset({"sd", "sdxl"})  # training architectures (families.py)
    allows_nsfw = True  # runs on the user's own machine
    paid = False  # no bill: nothing to reserve

    def __init__(self, cache_root: Path | None = None, device: str | None = None) -> None:
        self.cache_root = cache_root
        self.device = device
        self.last_cache_stats = CacheStats()  # what the latest `run` found in the cache and had to encode

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalLoraTrainer:
        return cls(cache_root=settings.cache_dir)

    def estimate_cost(self, spec: TrainingSpec, images: int) -> float:
        return 0.0  # the user's own machine

    def validate(self, spec: TrainingSpec) -> list[str]:
        problems = [
            f"{name} is not installed: `pip install 'flenwheel[local]'` (the local trainer needs it)"
            for name in ("torch", "diffusers", "peft", "transformers", "safetensors")
            if importlib.util.find_spec(name) is None
        ]
        if spec.family == "flux":
            problems.append(
                "the local trainer does not train Flux yet: use --trainer ai-toolkit, kohya or fal for Flux"
            )
        elif spec.family not in self.trains:
            problems.extend(refuse_family(self.id, self.trains, spec))
        if spec.base_model == TINY_MODEL_ID:
            if spec.family != "sd":
                problems.append(f"the tiny model is SD-family: set family 'sd', not {spec.family!r}")
            if spec.resolution > TINY_MAX_RESOLUTION:
                problems.append(
                    f"resolution {spec.resolution} is too high for the tiny test model: use "
                    f"{TINY_MAX_RESOLUTION} or less, or give a real base model"
                )
        else:
            source = Path(spec.base_model).expanduser()
            if not source.exists():
                problems.append(
                    f"base model {spec.base_model!r} not found: give 'tiny', a diffusers folder or an SD1.5 "
                    ".safetensors checkpoint"
                )
            elif source.is_dir() and not (source / "unet").is_dir():
                problems.append(f"{source} has no unet/ folder: give a diffusers model folder")
            elif source.is_file() and spec.family != "sd":
                problems.append(f"{spec.family} models must be a diffusers folder, not a single file")
        if spec.optimizer == "adamw8bit" and importlib.util.find_spec("bitsandbytes") is None:
            problems.append("optimizer adamw8bit needs bitsandbytes, which is not installed: pick adamw")
        if spec.optimizer == "prodigy" and importlib.util.find_spec("prodigyopt") is None:
            problems.append("optimizer prodigy needs prodigyopt, which is not installed: pick adamw")
        return problems

    def run(self, spec: TrainingSpec, data: TrainingInput, ctx: TrainingContext) -> TrainingResult:
        problems = self.validate(spec)
        if problems:
            raise TrainerError(self.id, "; ".join(problems))
        from flenwheel.trainers.lora_training import LoraSession

        cache_root = self.cache_root or default_cache_root()
        session = LoraSession(spec, data, ctx, cache_root, self.device)
        try:
            return session.train()
        finally:
            self.last_cache_stats = session.cache_stats
