"""FalTrainer against a local server speaking fal's queue and storage protocol (fal_training_server.py)."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fal_training_server import TRAINING, FalTrainingServer
from safetensors import safe_open
from trainer_data import built_project, training_input

from flenwheel.config import Settings
from flenwheel.store.project import Project
from flenwheel.trainers.base import LocalTrainingContext, TrainerError, TrainingCancelled, TrainingSpec
from flenwheel.trainers.fal import MISSING_KEY, FalTrainer

SPEC = TrainingSpec(trigger="ohwx woman", family="flux", epochs=10, repeats=25)  # 8 images: 2000 steps


class SimulatedCrash(Exception):
    pass


class CrashWhileWaiting(LocalTrainingContext):
    """A worker that dies while it waits: after the request id was remembered, before the LoRA came."""

    def progress(self, step: int, total: int, loss: float | None = None) -> None:
        raise SimulatedCrash


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    return built_project(tmp_path_factory.mktemp("fal") / "project")


@pytest.fixture
def server() -> Iterator[FalTrainingServer]:
    running = FalTrainingServer().start()
    yield running
    running.stop()


def trainer_for(server: FalTrainingServer) -> FalTrainer:
    return FalTrainer(server.key, queue_url=server.url, rest_url=server.url, poll_interval=0.01)


def test_trains_on_the_uploaded_zip_and_downloads_the_lora(
    project: Project, server: FalTrainingServer, tmp_path: Path
) -> None:
    data = training_input(project, "zip", tmp_path / "run1")
    seen: list[tuple[int, int, float | None]] = []
    ctx = LocalTrainingContext(on_progress=lambda step, total, loss: seen.append((step, total, loss)))
    trainer = trainer_for(server)

    result = trainer.run(SPEC, data, ctx)

    [submission] = server.submissions
    assert submission.endpoint == TRAINING and submission.authorization == f"Key {server.key}"
    [upload] = server.uploads
    assert upload.content_type == "application/zip" and upload.data == data.dataset_dir.read_bytes()
    assert submission.arguments["images_data_url"].startswith(f"{server.url}/files/")
    assert {k: v for k, v in submission.arguments.items() if k != "images_data_url"} == {
        "trigger_word": "ohwx",
        "steps": 2000,
        "create_masks": True,
        "is_style": False,
    }
    assert len(server.trained_on[0]) == 8
    assert seen and all(total == 2000 and loss is not None for _, total, loss in seen)
    assert [step for step, _, _ in seen] == sorted(step for step, _, _ in seen) and seen[-1][0] < 2000
    [checkpoint] = result.checkpoints
    assert checkpoint.step == 2000 and checkpoint.path.parent == data.work_dir / "checkpoints"
    with safe_open(str(checkpoint.path), framework="numpy") as handle:
        assert handle.metadata()["trigger_word"] == "ohwx" and len(handle.keys()) == 2
    assert json.loads(checkpoint.path.with_suffix(".json").read_text())["steps"] == 2000
    assert ctx.checkpoints == [checkpoint] and ctx.known_remote_id() in server.requests
    assert result.cost_usd == trainer.estimate_cost(SPEC, 8) == 4.0  # $2 per 1000 steps
    assert trainer.paid and result.cost_usd == pytest.approx(server.billed_usd(submission_id(server)))


def test_a_restart_resumes_the_same_training_without_paying_twice(
    project: Project, server: FalTrainingServer, tmp_path: Path
) -> None:
    data = training_input(project, "zip", tmp_path / "run1")
    crashed = CrashWhileWaiting()
    with pytest.raises(SimulatedCrash):
        trainer_for(server).run(SPEC, data, crashed)
    remembered = crashed.known_remote_id()
    assert remembered == next(iter(server.requests))

    restarted = LocalTrainingContext()
    restarted.remember_remote_id(remembered)  # what the job store hands the next worker
    result = trainer_for(server).run(SPEC, data, restarted)

    assert len(server.submissions) == 1 and len(server.uploads) == 1
    assert result.checkpoints[0].path.exists() and restarted.checkpoints == list(result.checkpoints)


def test_a_training_fal_forgot_is_submitted_again(
    project: Project, server: FalTrainingServer, tmp_path: Path
) -> None:
    data = training_input(project, "zip", tmp_path / "run1")
    ctx = LocalTrainingContext()
    ctx.remember_remote_id("00000000-0000-0000-0000-000000000000")
    trainer_for(server).run(SPEC, data, ctx)
    assert len(server.submissions) == 1 and ctx.known_remote_id() in server.requests


def test_cancel_cancels_the_training_on_fal(
    project: Project, server: FalTrainingServer, tmp_path: Path
) -> None:
    data = training_input(project, "zip", tmp_path / "run1")
    server.pending_polls = 50
    with pytest.raises(TrainingCancelled):
        trainer_for(server).run(SPEC, data, LocalTrainingContext(cancel_after_step=1))
    request_id = submission_id(server)
    assert server.cancels == [request_id]
    server.pending_polls = 0  # had it not been cancelled, the next poll would finish it and bill $4
    trainer_for(server).client.status(TRAINING, request_id)  # type: ignore[union-attr]
    assert server.billed_usd(request_id) == 0  # fal bills successful outputs only


def test_a_cancelled_training_run_again_is_submitted_anew(
    project: Project, server: FalTrainingServer, tmp_path: Path
) -> None:
    data = training_input(project, "zip", tmp_path / "run1")
    server.pending_polls = 50
    ctx = LocalTrainingContext(cancel_after_step=1)
    with pytest.raises(TrainingCancelled):
        trainer_for(server).run(SPEC, data, ctx)
    cancelled = ctx.known_remote_id()
    server.pending_polls = 3

    again = LocalTrainingContext()
    again.remember_remote_id(cancelled or "")  # what the job store hands the retry
    trainer_for(server).run(SPEC, data, again)
    assert len(server.submissions) == 2 and again.known_remote_id() != cancelled


def submission_id(server: FalTrainingServer) -> str:
    return next(iter(server.requests))


def test_a_failed_training_says_what_fal_said(
    project: Project, server: FalTrainingServer, tmp_path: Path
) -> None:
    data = training_input(project, "zip", tmp_path / "run1")
    tiny_zip = tmp_path / "three.zip"
    with zipfile.ZipFile(data.dataset_dir) as source, zipfile.ZipFile(tiny_zip, "w") as target:
        for name in [n for n in source.namelist() if n.endswith(".jpg")][:3]:
            target.writestr(name, source.read(name))
    three = data.model_copy(update={"dataset_dir": tiny_zip})
    with pytest.raises(TrainerError, match="At least 4 images are required, found 3") as failure:
        trainer_for(server).run(SPEC, three, LocalTrainingContext())
    assert not failure.value.transient


def test_a_refused_key_names_the_fix(project: Project, server: FalTrainingServer, tmp_path: Path) -> None:
    data = training_input(project, "zip", tmp_path / "run1")
    trainer = FalTrainer("wrong-key", queue_url=server.url, rest_url=server.url, poll_interval=0.01)
    with pytest.raises(TrainerError, match="check FAL_KEY") as failure:
        trainer.run(SPEC, data, LocalTrainingContext())
    assert not failure.value.transient and not server.submissions


def test_validate_and_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAL_KEY", raising=False)
    assert FalTrainer.from_settings(Settings(project=tmp_path)) is None
    assert FalTrainer(None).validate(SPEC) == [MISSING_KEY]
    problems = FalTrainer("k").validate(
        TrainingSpec(trigger="ohwx woman", base_model="/models/sd15.safetensors")
    )
    assert any("fal trains flux, qwen-image, qwen-image-edit, not sd" in p for p in problems)
    problems = FalTrainer("k").validate(
        TrainingSpec(trigger="ohwx woman", family="flux", base_model="/models/sd15.safetensors")
    )
    assert any(
        "trains black-forest-labs/FLUX.1-dev only, not /models/sd15.safetensors" in p for p in problems
    )
    monkeypatch.setenv("FAL_KEY", "abc")
    configured = FalTrainer.from_settings(Settings(project=tmp_path))
    assert configured is not None and configured.validate(SPEC) == [] and not configured.allows_nsfw


def test_a_qwen_image_lora_trains_on_fals_qwen_trainer_and_costs_what_fal_bills(
    project: Project, server: FalTrainingServer, tmp_path: Path
) -> None:
    """fal-ai/qwen-image-trainer: image_data_url (images with same-named captions), steps, learning rate and
    trigger phrase; fal charges at least 250 steps, and flenwheel reserves and records what fal bills."""
    from fal_training_server import QWEN_TRAINING

    data = training_input(project, "zip", tmp_path / "qwen")
    spec = TrainingSpec(trigger="ohwx woman", family="qwen-image", epochs=1, repeats=2, learning_rate=2e-4)
    trainer = trainer_for(server)
    assert trainer.validate(spec) == []
    result = trainer.run(spec, data, LocalTrainingContext())
    [submission] = server.submissions
    assert submission.endpoint == QWEN_TRAINING
    assert {k: v for k, v in submission.arguments.items() if k != "image_data_url"} == {
        "steps": 16,
        "learning_rate": 2e-4,
        "trigger_phrase": "ohwx",
    }
    assert result.cost_usd == trainer.estimate_cost(spec, 8) == 0.5  # 16 steps, billed as 250 at $0.002
    assert result.cost_usd == pytest.approx(server.billed_usd(submission_id(server)))
    assert trainer.validate(
        spec.model_copy(update={"base_model": "Qwen/Qwen-Image-Edit-2509"})
    )  # not this one
