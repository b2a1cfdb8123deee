"""The evaluation grid: every checkpoint × LoRA strength × model-card prompt, as generation requests.

Only planning lives here; pipeline/evaluation.py runs the cells through the provider router and stores them.
A cell is identified by (checkpoint id, strength, prompt key) — the unique key of `evaluation_sample` — so an
interrupted evaluation skips what it already scored.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from pydantic import Field

from flenwheel.domain import Frozen
from flenwheel.errors import InvalidInput
from flenwheel.evaluation.prompts import EvaluationPrompt
from flenwheel.providers.base import LoraRef, TextToImage

DEFAULT_STRENGTHS = (0.6, 0.8, 1.0)  # seed 002: "Works at 0.6-1.0 strength"


class CheckpointRef(Frozen):
    """A checkpoint to evaluate: its row id, where it sits in training, and its file."""

    id: int
    step: int
    epoch: int | None = None
    path: Path

    @property
    def label(self) -> str:
        return f"step {self.step}" + (f" (epoch {self.epoch})" if self.epoch is not None else "")


class GridCell(Frozen):
    """One image to draw: a checkpoint at a strength on one prompt."""

    checkpoint: CheckpointRef
    strength: float = Field(ge=-4.0, le=4.0)
    prompt: EvaluationPrompt

    @property
    def key(self) -> tuple[int, float, str]:
        return (self.checkpoint.id, self.strength, self.prompt.key)


class GridSettings(Frozen):
    """How each image is drawn: size, steps, guidance and the base model the LoRA was trained on."""

    size: int = Field(default=512, ge=64, le=2048, multiple_of=8)
    steps: int = Field(default=20, ge=1, le=150)
    guidance: float = Field(default=7.0, ge=0.0, le=30.0)
    model: str | None = None  # None = the provider's default model
    negative: str = ""


def parse_strengths(text: str) -> tuple[float, ...]:
    """'0.6,0.8,1.0' → (0.6, 0.8, 1.0), sorted and without repeats; a clear error for anything else."""
    try:
        values = sorted({round(float(part), 4) for part in text.split(",") if part.strip()})
    except ValueError:
        raise InvalidInput(
            f"strengths {text!r}: give numbers separated by commas, e.g. 0.6,0.8,1.0"
        ) from None
    return check_strengths(values)


def check_strengths(values: Iterable[float]) -> tuple[float, ...]:
    strengths = tuple(sorted({round(float(value), 4) for value in values}))
    if not strengths:
        raise InvalidInput("give at least one LoRA strength, e.g. 0.6,0.8,1.0")
    bad = [value for value in strengths if not 0.0 < value <= 4.0]
    if bad:
        raise InvalidInput(f"LoRA strength(s) {bad} out of range: use values above 0 and at most 4")
    return strengths


def plan_grid(
    checkpoints: Sequence[CheckpointRef], strengths: Sequence[float], prompts: Sequence[EvaluationPrompt]
) -> tuple[GridCell, ...]:
    """Every cell, checkpoint by checkpoint (training order), then strength, then prompt."""
    if not checkpoints:
        raise InvalidInput("the training run has no checkpoints yet: train it, or wait for the first one")
    if not prompts:
        raise InvalidInput("no prompts to evaluate: use 'all' or 'quick'")
    ordered = sorted(checkpoints, key=lambda checkpoint: (checkpoint.step, checkpoint.id))
    return tuple(
        GridCell(checkpoint=checkpoint, strength=strength, prompt=prompt)
        for checkpoint in ordered
        for strength in check_strengths(strengths)
        for prompt in prompts
    )


def cell_request(cell: GridCell, settings: GridSettings) -> TextToImage:
    """The text-to-image request for a cell: the prompt's fixed seed, the checkpoint at the cell's strength."""
    return TextToImage(
        prompt=cell.prompt.text,
        negative=settings.negative,
        model=settings.model,
        loras=(LoraRef(path=str(cell.checkpoint.path), strength=cell.strength),),
        seed=cell.prompt.seed,
        width=settings.size,
        height=settings.size,
        steps=settings.steps,
        guidance=settings.guidance,
    )


def strength_text(value: float) -> str:
    """A LoRA strength as users write it: 0.6, 0.85, 1.0."""
    text = f"{value:.4f}".rstrip("0")
    return text + "0" if text.endswith(".") else text
