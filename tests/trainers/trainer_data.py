"""A small built dataset version (the lisa photos) and the TrainingInput a trainer gets for it, per format."""

from __future__ import annotations

import json
from pathlib import Path

from flenwheel.characters import create_character
from flenwheel.config import Settings
from flenwheel.datasets.curate import curate
from flenwheel.datasets.export import export_dataset
from flenwheel.datasets.ingest import ingest
from flenwheel.datasets.versions import build_dataset_version
from flenwheel.store.project import Project
from flenwheel.trainers.base import TrainingImage, TrainingInput

from photos import LISA, london

CHARACTER = "lisa"


def built_project(root: Path) -> Project:
    """A project whose character `lisa` (token ohwx, class woman) has one dataset version."""
    project = Project.init(Settings(project=root))
    create_character(project, CHARACTER, "ohwx", "woman")
    ingest(project, CHARACTER, [*LISA, london(4)])
    curate(project, CHARACTER)
    build_dataset_version(project, CHARACTER)
    return project


def training_input(project: Project, fmt: str, work_dir: Path) -> TrainingInput:
    """What pipeline/training.py hands a trainer: the dataset exported in `fmt` under the run's folder."""
    export_dir = work_dir / f"dataset-{fmt}"
    export_dataset(project, CHARACTER, fmt, export_dir)
    document = json.loads((export_dir / "metadata.json").read_text())
    items = tuple(
        TrainingImage(path=export_dir / image["filename"], caption=image["caption"])
        for image in document["images"]
    )
    dataset_dir = next(export_dir.glob("*.zip")) if fmt == "zip" else export_dir
    return TrainingInput(
        character=CHARACTER,
        dataset_version=document["dataset_version"],
        items=items,
        dataset_dir=dataset_dir,
        work_dir=work_dir,
    )
