"""`flenwheel train` on the built-in tiny model: checkpoints and losses land in the store as they happen, a
stopped run resumes where it stopped, and the checkpoint it picks is a LoRA the studio can load."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from flenwheel.errors import InvalidInput
from flenwheel.images import decode_image
from flenwheel.jobs.base import JobCancelled
from flenwheel.pipeline.generation import run_generation
from flenwheel.pipeline.training import latest_run, train_character
from flenwheel.providers.base import LoraRef, TextToImage
from flenwheel.store.models import Checkpoint, TrainingRun
from flenwheel.store.project import Project
from flenwheel.store.run import RunContext
from flenwheel.trainers.base import TrainingCancelled
from flenwheel.trainers.local_lora import LocalLoraTrainer

from checkpoint_runs import character_with_dataset

SMALL = {"resolution": 64, "rank": 4, "epochs": 2, "repeats": 1, "seed": 7}


@pytest.fixture
def trained_project(project: Project) -> Project:
    character_with_dataset(project)
    return project


def test_a_run_records_each_checkpoint_and_its_losses(trained_project: Project) -> None:
    outcome = train_character(trained_project, "lisa", LocalLoraTrainer(), **SMALL)

    assert outcome.status == "succeeded" and outcome.steps == 8  # 4 images × 1 repeat × 2 epochs
    assert [(c["step"], c["epoch"]) for c in outcome.checkpoints] == [(4, 1), (8, 2)]
    run = latest_run(trained_project, "lisa")
    assert [step for step, _loss in run.losses] == list(range(1, 9))
    assert all(np.isfinite(loss) for _step, loss in run.losses)
    for checkpoint in outcome.checkpoints:
        assert (trained_project.root / checkpoint["path"]).is_file()


def test_a_cancelled_run_resumes_to_the_same_weights_as_an_uninterrupted_one(
    trained_project: Project,
) -> None:
    with pytest.raises((TrainingCancelled, JobCancelled)):
        train_character(
            trained_project, "lisa", LocalLoraTrainer(), ctx=RunContext.detached(cancel_after_step=3), **SMALL
        )
    with trained_project.db.session() as session:
        stopped = session.scalars(select(TrainingRun)).one()
        assert stopped.status == "cancelled" and 3 <= stopped.step < 8

    resumed = train_character(trained_project, "lisa", LocalLoraTrainer(), **SMALL)
    assert resumed.resumed and resumed.run_id == stopped.id and resumed.steps == 8

    fresh = train_character(trained_project, "lisa", LocalLoraTrainer(), **{**SMALL, "seed": 8})
    again = train_character(trained_project, "lisa", LocalLoraTrainer(), **{**SMALL, "seed": 8})
    assert fresh.run_id != resumed.run_id  # other settings, another run
    assert again.run_id != fresh.run_id  # a finished run is never resumed: same settings train anew

    def final_bytes(run_id: int) -> dict[str, np.ndarray]:
        from safetensors.numpy import load_file

        with trained_project.db.session() as session:
            last = session.scalars(
                select(Checkpoint).where(Checkpoint.run_id == run_id).order_by(Checkpoint.step.desc())
            ).first()
            assert last is not None
            return load_file(trained_project.root / last.path)

    uninterrupted = train_character(trained_project, "lisa", LocalLoraTrainer(), **{**SMALL, "epochs": 2})
    assert uninterrupted.run_id != resumed.run_id
    a, b = final_bytes(resumed.run_id), final_bytes(uninterrupted.run_id)
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[key], b[key]) for key in a)


def test_the_trained_lora_changes_what_the_studio_draws(trained_project: Project) -> None:
    # A few steps at the usual 1e-4 move a zero-initialised LoRA very little; a high rate makes it show.
    outcome = train_character(trained_project, "lisa", LocalLoraTrainer(), **{**SMALL, "learning_rate": 0.01})
    lora = str(trained_project.root / outcome.checkpoints[-1]["path"])
    request = TextToImage(prompt="photo of ohwx woman", seed=3, steps=2, width=64, height=64)

    def pixels(strength: float | None) -> np.ndarray:
        loras = () if strength is None else (LoraRef(path=lora, strength=strength),)
        result = run_generation(trained_project, "lisa", request.model_copy(update={"loras": loras}))
        return np.asarray(decode_image(result.outputs[0].file.read_bytes()).image, dtype=np.int16)

    plain, with_lora = pixels(None), pixels(1.0)
    assert np.abs(plain - with_lora).mean() > 0.5


def test_settings_a_trainer_cannot_use_are_refused_before_anything_runs(trained_project: Project) -> None:
    with pytest.raises(InvalidInput, match="resolution"):
        train_character(trained_project, "lisa", LocalLoraTrainer(), resolution=100)
    with pytest.raises(InvalidInput, match="no training run"):
        latest_run(trained_project, "lisa")
