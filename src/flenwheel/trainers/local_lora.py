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

import hashlib
import importlib.util
import json
import logging
import os
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flenwheel.config import Settings
from flenwheel.providers.tiny_model import TINY_MODEL_ID, default_cache_root
from flenwheel.trainers.base import (
    CheckpointFile,
    DatasetFormat,
    TrainerError,
    TrainingContext,
    TrainingInput,
    TrainingResult,
    TrainingSpec,
)
from flenwheel.trainers.latent_cache import CacheStats, PreparedItem, prepare_items
from flenwheel.trainers.lora_file import LoraFileFacts, kohya_tensors, lora_metadata, write_lora_file

log = logging.getLogger(__name__)

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
TINY_MAX_RESOLUTION = 256
STATE_FILE = "state.pt"
# Spec fields that may change between a stop and a resume without changing the steps already taken.
RESUMABLE_CHANGES = {"epochs", "max_steps", "save_every_epochs", "save_every_steps"}


class LocalLoraTrainer:
    """diffusers + PEFT LoRA training in this process (CPU or CUDA); resumable, deterministic, cached."""

    id = "local"
    dataset_format: DatasetFormat = "images"
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


@dataclass
class Plan:
    """The step plan: batches per epoch (fixed for the run), total steps, and when to save."""

    steps_per_epoch: int
    total_steps: int
    save_every_steps: int | None
    save_every_epochs: int | None

    def due(self, step: int) -> bool:
        if step >= self.total_steps:
            return True
        if self.save_every_steps and step % self.save_every_steps == 0:
            return True
        epoch_end = step % self.steps_per_epoch == 0
        return bool(
            epoch_end
            and self.save_every_epochs
            and (step // self.steps_per_epoch) % self.save_every_epochs == 0
        )


def epoch_batches(
    items: list[PreparedItem], repeats: int, batch_size: int, seed: int, epoch: int
) -> list[list[int]]:
    """Item indexes for each batch of one epoch: repeats, same-bucket batches, an order seeded by (seed, epoch)."""
    rng = random.Random(f"flenwheel-epoch-{seed}-{epoch}")
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for index, item in enumerate(items):
        by_bucket.setdefault((item.bucket.width, item.bucket.height), []).extend([index] * repeats)
    batches: list[list[int]] = []
    for bucket in sorted(by_bucket):
        indexes = by_bucket[bucket]
        rng.shuffle(indexes)
        batches.extend(indexes[start : start + batch_size] for start in range(0, len(indexes), batch_size))
    rng.shuffle(batches)
    return batches


def make_plan(spec: TrainingSpec, items: list[PreparedItem]) -> Plan:
    per_epoch = len(epoch_batches(items, spec.repeats, spec.batch_size, spec.seed, 0))
    total = per_epoch * spec.epochs
    if spec.max_steps is not None:
        total = min(total, spec.max_steps)
    return Plan(per_epoch, total, spec.save_every_steps, spec.save_every_epochs)


def step_seed(seed: int, step: int) -> int:
    """The seed of one step's noise, timesteps and latent samples: independent of where a run resumed."""
    digest = hashlib.sha256(f"flenwheel-step-{seed}-{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def run_fingerprint(spec: TrainingSpec, items: list[PreparedItem]) -> str:
    """What saved state must match to be resumed: the spec (less RESUMABLE_CHANGES) and the data."""
    values = spec.model_dump(mode="json", exclude=RESUMABLE_CHANGES)
    data = [[item.sha256, item.caption] for item in items]
    return hashlib.sha256(json.dumps([values, data], sort_keys=True).encode()).hexdigest()[:20]


def output_name(data: TrainingInput) -> str:
    raw = f"{data.character}-{data.dataset_version}"
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in raw)


@dataclass
class SavedState:
    """What `work_dir/state/state.pt` holds between a stop and a resume."""

    global_step: int
    epoch: int  # the epoch and batch index the next step starts at (global_step says the same)
    batch_index: int
    lora: dict[str, Any]
    optimizer: dict[str, Any]
    ema: dict[str, Any] | None
    losses: list[tuple[int, float]]
    checkpoints: list[CheckpointFile] = field(default_factory=list)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def save_state(path: Path, fingerprint: str, state: SavedState) -> None:
    """torch.save into a temporary file, then rename: a crash mid-save keeps the previous state."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "fingerprint": fingerprint,
        "global_step": state.global_step,
        "epoch": state.epoch,
        "batch_index": state.batch_index,
        "lora": state.lora,
        "optimizer": state.optimizer,
        "ema": state.ema,
        "losses": [[step, loss] for step, loss in state.losses],
        "checkpoints": [c.model_dump(mode="json") for c in state.checkpoints],
        "started_at": state.started_at.isoformat(),
        "torch_rng": torch.get_rng_state(),
    }
    partial = path.with_name(path.name + ".part")
    torch.save(payload, partial)
    os.replace(partial, path)


def load_state(path: Path, fingerprint: str) -> SavedState | None:
    """The saved state of an earlier run in this work_dir, None when there is none; refuses a different run's."""
    import torch

    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise TrainerError(
            "local", f"cannot read the saved training state {path}: {exc}; delete it to start over"
        ) from exc
    if payload["fingerprint"] != fingerprint:
        raise TrainerError(
            "local",
            f"{path.parent.parent} holds a run with other settings or data: use a new work folder, or delete "
            f"{path.parent} to start this one over",
        )
    return SavedState(
        global_step=int(payload["global_step"]),
        epoch=int(payload["epoch"]),
        batch_index=int(payload["batch_index"]),
        lora=payload["lora"],
        optimizer=payload["optimizer"],
        ema=payload["ema"],
        losses=[(int(step), float(loss)) for step, loss in payload["losses"]],
        checkpoints=[CheckpointFile.model_validate(c) for c in payload["checkpoints"]],
        started_at=datetime.fromisoformat(payload["started_at"]),
    )


def checkpoint_path(data: TrainingInput, step: int, epoch: int | None) -> Path:
    name = output_name(data)
    suffix = f"epoch{epoch:03d}" if epoch is not None else f"step{step:06d}"
    return data.work_dir / "checkpoints" / f"{name}-{suffix}.safetensors"


def write_checkpoint(
    spec: TrainingSpec,
    data: TrainingInput,
    family: Any,
    base_model_name: str,
    weights: dict[str, Any],
    step: int,
    epoch: int | None,
    started_at: datetime,
    completed_epochs: int,
) -> CheckpointFile:
    """Kohya-keyed LoRA file of `weights` ({"unet.<module>.lora_A": tensor, "te0.<module>.lora_B": …})."""
    prefixes = {"unet": "lora_unet", "te0": "lora_te" if family == "sd" else "lora_te1", "te1": "lora_te2"}
    tensors: dict[str, Any] = {}
    for part, prefix in prefixes.items():
        modules: dict[str, list[Any]] = {}
        for name, value in weights.items():
            owner, module_and_kind = name.split(".", 1)
            if owner != part:
                continue
            module, kind = module_and_kind.rsplit(".", 1)
            if part != "unet" and not module.startswith("text_model."):
                module = (
                    f"text_model.{module}"  # transformers 5 drops it; kohya, diffusers and ComfyUI expect it
                )
            modules.setdefault(module, [None, None])[0 if kind == "lora_A" else 1] = value
        tensors.update(
            kohya_tensors({m: (ab[0], ab[1]) for m, ab in modules.items()}, prefix, spec.network_alpha)
        )
    facts = LoraFileFacts(
        output_name=output_name(data),
        base_model_name=base_model_name,
        started_at=started_at,
        step=step,
        epoch=completed_epochs,
        num_images=len(data.items),
        captions=tuple(item.caption for item in data.items),
        ema=spec.ema,
    )
    path = checkpoint_path(data, step, epoch)
    write_lora_file(path, tensors, lora_metadata(spec, facts, tensors, family))
    return CheckpointFile(path=path, step=step, epoch=epoch)


def prepared_items(spec: TrainingSpec, data: TrainingInput) -> list[PreparedItem]:
    return prepare_items([(item.path, item.caption) for item in data.items], spec.resolution, spec.buckets)


def cancelled_message(step: int, total: int, state_dir: Path) -> str:
    return (
        f"local: stopped at step {step}/{total}; state kept in {state_dir}: run it again to resume from there"
    )
