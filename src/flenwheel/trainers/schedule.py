"""Epochs ↔ steps for trainers that count optimizer steps (ai-toolkit, fal, Replicate) rather than epochs."""

from __future__ import annotations

import math

from flenwheel.trainers.base import TrainingSpec


def steps_per_epoch(spec: TrainingSpec, images: int) -> int:
    """Optimizer steps in one pass over the dataset with its repeats."""
    return max(1, math.ceil(images * spec.repeats / spec.batch_size))


def planned_steps(spec: TrainingSpec, images: int) -> tuple[int, int]:
    """(total steps, save every N steps) for a spec that may be written in epochs; max_steps caps the total."""
    per_epoch = steps_per_epoch(spec, images)
    total = spec.epochs * per_epoch
    if spec.max_steps is not None:
        total = min(total, spec.max_steps)
    every = spec.save_every_steps or (spec.save_every_epochs or 1) * per_epoch
    return total, min(every, total)
