"""A character with real photos and a training run whose checkpoint files the test makes itself.

The evaluation tests need a finished run without training one: the run and checkpoint rows are inserted
through the store, as a trainer's context would record them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from flenwheel.characters import create_character
from flenwheel.datasets.curate import curate
from flenwheel.datasets.ingest import ingest
from flenwheel.datasets.versions import build_dataset_version
from flenwheel.store.models import Checkpoint, TrainingRun
from flenwheel.store.project import Project, get_character

from photos import LISA

TRAINING_PHOTOS = LISA[:4]  # the character's references and training set
UNSEEN_PHOTOS = LISA[4:]  # the same woman in photos the "LoRA" never saw


def character_with_dataset(project: Project, name: str = "lisa") -> None:
    """lisa: four reference photos, curated and frozen as dataset v1."""
    create_character(project, name, "ohwx", "woman")
    ingest(project, name, list(TRAINING_PHOTOS), reference=True)
    curate(project, name)
    build_dataset_version(project, name)


def add_run(
    project: Project,
    name: str,
    checkpoints: Sequence[tuple[str, bytes | Path]],
    losses: Sequence[tuple[int, float]] = (),
    spec: dict | None = None,
) -> tuple[int, list[int]]:
    """A succeeded run with one checkpoint per (file stem, content or LoRA file), 100 steps apart."""
    with project.db.session() as session:
        character = get_character(session, name)
        version_id = max(v.id for v in _versions(session, character.id))
        run = TrainingRun(
            character_id=character.id,
            dataset_version_id=version_id,
            trainer="local",
            spec=spec or {"base_model": "tiny", "learning_rate": 1e-4, "trigger": "ohwx woman"},
            status="succeeded",
            step=100 * len(checkpoints),
            total_steps=100 * len(checkpoints),
            losses=[[step, loss] for step, loss in losses],
        )
        session.add(run)
        session.flush()
        run.work_dir = f"training/{name}/run{run.id}"
        folder = project.root / run.work_dir / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        ids = []
        for index, (stem, content) in enumerate(checkpoints):
            data = content.read_bytes() if isinstance(content, Path) else content
            path = folder / f"{stem}.safetensors"
            path.write_bytes(data)
            checkpoint = Checkpoint(
                run_id=run.id,
                step=100 * (index + 1),
                epoch=index + 1,
                path=path.relative_to(project.root).as_posix(),
                sha256=hashlib.sha256(data).hexdigest(),
            )
            session.add(checkpoint)
            session.flush()
            ids.append(checkpoint.id)
        return run.id, ids


def tiny_lora_file(path: Path, seed: int) -> Path:
    """A PEFT LoRA on the tiny UNet with non-zero up-weights (so it changes the output), saved with diffusers'
    save_lora_weights; `seed` decides its weights."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from flenwheel.providers.tiny_model import ensure_tiny_model

    pipeline = StableDiffusionPipeline.from_pretrained(ensure_tiny_model())
    torch.manual_seed(seed)  # PEFT draws lora_A from the global generator
    pipeline.unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    )
    with torch.no_grad():
        for name, parameter in pipeline.unet.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipeline.unet))
    path.parent.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(path.parent, unet_lora_layers=layers, weight_name=path.name)
    return path


def _versions(session, character_id: int) -> list:
    from sqlalchemy import select

    from flenwheel.store.models import DatasetVersion

    return list(session.scalars(select(DatasetVersion).where(DatasetVersion.character_id == character_id)))
