"""The built-in trainers, registered through the same pluggy hook as third-party ones.

Each class has `from_settings(settings) -> Trainer | None`; None means "not configured here" (no key, no
path), so `flenwheel train --help` lists only what can run.
"""

from __future__ import annotations

import importlib
from typing import Any

from flenwheel.config import Settings
from flenwheel.plugins import hookimpl

BUILT_IN = [
    ("flenwheel.trainers.local_lora", "LocalLoraTrainer"),
    ("flenwheel.trainers.ai_toolkit", "AiToolkitTrainer"),
    ("flenwheel.trainers.kohya", "KohyaTrainer"),
    ("flenwheel.trainers.fal", "FalTrainer"),
    ("flenwheel.trainers.replicate", "ReplicateTrainer"),
]


@hookimpl
def register_trainers(settings: Settings) -> list[Any]:
    trainers = []
    for module_name, class_name in BUILT_IN:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # not part of this build
            raise
        trainer = getattr(module, class_name).from_settings(settings)
        if trainer is not None:
            trainers.append(trainer)
    return trainers
