"""The plan of a local LoRA run (local_lora.py): steps and batches, seeds, the resumable state and the
checkpoint files; torch is imported only where a file is read or written. The training session
(lora_training.py) runs on these; the trainer itself needs none of them."""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flenwheel.trainers.base import CheckpointFile, TrainerError, TrainingInput, TrainingSpec
from flenwheel.trainers.latent_cache import PreparedItem, prepare_items
from flenwheel.trainers.lora_file import LoraFileFacts, kohya_tensors, lora_metadata, write_lora_file

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
STATE_FILE = "state.pt"
# Spec fields that may change between a stop and a resume without changing the steps already taken.
RESUMABLE_CHANGES = {"epochs", "max_steps", "save_every_epochs", "save_every_steps"}


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
