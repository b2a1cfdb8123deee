"""Fixtures for the trainer tests: real photos of one person as a training input, and a shared model cache."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from flenwheel.trainers.base import TrainingImage, TrainingInput

from photos import LISA

TrainingInputFactory = Callable[..., TrainingInput]


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache root per session: the tiny model is built once, each test gets its own latent cache below."""
    return tmp_path_factory.mktemp("flenwheel-cache")


@pytest.fixture
def lisa_input(tmp_path: Path) -> TrainingInputFactory:
    """A TrainingInput over the first `count` photos of Lisa (600x800 portraits), in a fresh work folder."""

    def make(count: int = 4, work: str = "run", photos: list[Path] | None = None) -> TrainingInput:
        chosen = photos if photos is not None else LISA[:count]
        items = tuple(
            TrainingImage(path=path, caption=f"ohwx woman, photo {index}")
            for index, path in enumerate(chosen)
        )
        return TrainingInput(
            character="lisa",
            dataset_version="v1",
            items=items,
            dataset_dir=chosen[0].parent,
            work_dir=tmp_path / work,
        )

    return make
