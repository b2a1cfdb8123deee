"""The Trainer contract: a typed training spec, the dataset handed to a trainer, and the context it reports to.

A trainer turns one dataset version into LoRA checkpoints. The caller (pipeline/training.py) exports the
dataset version into `TrainingInput.dataset_dir` in the trainer's `dataset_format` first, so a trainer never
reads the store. Every trainer is resumable: it reports each checkpoint as it lands and keeps whatever it
needs to continue (optimizer state, a remote job id) through the context.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from pydantic import Field, model_validator

from flenwheel.domain import Frozen
from flenwheel.errors import FlenwheelError
from flenwheel.families import TrainingArch
from flenwheel.store.run import RunContext

ModelFamily = TrainingArch  # sd, sdxl, flux, qwen-image, qwen-image-edit, z-image (families.py)
Optimizer = Literal["adamw", "adamw8bit", "prodigy", "sgd"]
DatasetFormat = Literal["kohya", "ai-toolkit", "zip", "images"]


class TrainingSpec(Frozen):
    """Everything that decides what a training run produces. Seed 002's parameters, with its defaults."""

    base_model: str = (
        "tiny"  # "tiny", a diffusers folder / .safetensors path, or the remote trainer's model id
    )
    family: ModelFamily = "sd"
    trigger: str = Field(min_length=1, max_length=96)  # "ohwx_maya woman": token + class
    rank: int = Field(default=16, ge=1, le=256)
    alpha: float | None = Field(default=None, gt=0)  # None = rank (scale 1)
    learning_rate: float = Field(default=1e-4, gt=0, le=1.0)
    optimizer: Optimizer = "adamw"
    epochs: int = Field(default=10, ge=1, le=1000)
    max_steps: int | None = Field(default=None, ge=1, le=1_000_000)  # stops early when reached
    batch_size: int = Field(default=1, ge=1, le=64)
    resolution: int = Field(default=512, ge=64, le=2048, multiple_of=64)
    buckets: bool = True  # aspect-ratio buckets around `resolution`; False = centre-crop squares
    repeats: int = Field(default=1, ge=1, le=1000)
    seed: int = Field(default=42, ge=0, le=2**32 - 1)
    save_every_epochs: int | None = Field(default=1, ge=1)
    save_every_steps: int | None = Field(default=None, ge=1)
    ema: bool = False
    ema_decay: float = Field(default=0.999, gt=0.0, lt=1.0)
    train_text_encoder: bool = False

    @property
    def network_alpha(self) -> float:
        return float(self.alpha if self.alpha is not None else self.rank)

    @model_validator(mode="after")
    def _saves_something(self) -> TrainingSpec:
        if self.save_every_epochs is None and self.save_every_steps is None:
            raise ValueError("set save_every_epochs or save_every_steps, or no checkpoint is ever written")
        return self


class TrainingImage(Frozen):
    path: Path
    caption: str


class TrainingInput(Frozen):
    """The dataset version as files: `items` always, plus `dataset_dir` in the trainer's own format."""

    character: str
    dataset_version: str  # "v3"
    items: tuple[TrainingImage, ...] = Field(min_length=1)
    dataset_dir: Path  # export in `Trainer.dataset_format` (a .zip file for "zip")
    work_dir: Path  # the run's folder: checkpoints/, state/, logs; survives a restart


class CheckpointFile(Frozen):
    """A LoRA .safetensors written by a trainer (kohya keys, ss_* and modelspec.* metadata)."""

    path: Path
    step: int = Field(ge=0)
    epoch: int | None = None


class TrainingResult(Frozen):
    checkpoints: tuple[CheckpointFile, ...]
    losses: tuple[tuple[int, float], ...] = ()  # (global step, loss)
    total_steps: int = 0
    cost_usd: float = 0.0


# The one run context (store/run.py) is what every trainer reports through: `progress(step, total, loss)`,
# `cancelled()`, `checkpoint_saved(checkpoint)`, `remember_remote_id(id)` before waiting, `known_remote_id()`.
TrainingContext = RunContext


class TrainingCancelled(FlenwheelError):
    """The run stopped at the user's request; the checkpoints saved so far stay valid."""


class TrainerError(FlenwheelError):
    """A trainer failed. `transient` errors (a lost connection, 5xx) may be retried; the message says the fix."""

    def __init__(self, trainer: str, message: str, transient: bool = False) -> None:
        super().__init__(f"{trainer}: {message}")
        self.trainer = trainer
        self.transient = transient


@runtime_checkable
class Trainer(Protocol):
    id: str
    dataset_format: DatasetFormat
    allows_nsfw: bool  # False for trainers that send the dataset off the user's machines

    def validate(self, spec: TrainingSpec) -> list[str]:
        """Problems with this spec for this trainer, each saying how to fix it; [] when it can run."""

    def estimate_cost(self, spec: TrainingSpec, images: int) -> float: ...

    def run(self, spec: TrainingSpec, data: TrainingInput, ctx: TrainingContext) -> TrainingResult: ...


def refuse_family(trainer: str, trains: frozenset[str], spec: TrainingSpec) -> list[str]:
    """[] when `trainer` trains `spec.family`, else one problem naming the trainers that do."""
    if spec.family in trains:
        return []
    return [
        f"{trainer} does not train {spec.family} (it trains {', '.join(sorted(trains))}): use --trainer "
        "ai-toolkit for FLUX, Qwen-Image, Qwen-Image-Edit and Z-Image (see `flenwheel trainers`)"
    ]


class LocalTrainingContext(RunContext):
    """A run with no database, for calling one trainer directly: each step goes to `on_progress(step, total,
    loss)` (loss: float or None, never a message string), the checkpoints and losses it reports are kept in
    `.checkpoints` / `.losses`; `cancel_after_step` stops it cooperatively."""

    def __init__(
        self,
        on_progress: Callable[[int, int, float | None], None] | None = None,
        cancel_after_step: int | None = None,
    ) -> None:
        super().__init__()
        self._cancel_after_step = cancel_after_step
        user = on_progress

        def step(done: int, total: int, loss: float | None) -> None:
            if loss is not None:
                self.losses.append((done, float(loss)))
            if user is not None:
                user(done, total, loss)

        self._on_step = step
