"""ReplicateTrainer against a local server speaking Replicate's trainings and files API (replicate_training_server.py)."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from replicate_training_server import TRAINER, TRAINER_VERSION, ReplicateTrainingServer
from safetensors import safe_open
from trainer_data import built_project, training_input

from flenwheel.config import Settings
from flenwheel.store.project import Project
from flenwheel.trainers.base import LocalTrainingContext, TrainerError, TrainingCancelled, TrainingSpec
from flenwheel.trainers.replicate import MISSING_DESTINATION, MISSING_TOKEN, ReplicateTrainer

SPEC = TrainingSpec(trigger="ohwx woman", family="flux", epochs=10, repeats=25, rank=32, learning_rate=4e-4)


class SimulatedCrash(Exception):
    pass


class CrashWhileWaiting(LocalTrainingContext):
    """A worker that dies while it waits: after the training id was remembered, before the weights came."""

    def progress(self, step: int, total: int, loss: float | None = None) -> None:
        raise SimulatedCrash


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    return built_project(tmp_path_factory.mktemp("replicate") / "project")


@pytest.fixture
def server() -> Iterator[ReplicateTrainingServer]:
    running = ReplicateTrainingServer().start()
    yield running
    running.stop()


def trainer_for(
    server: ReplicateTrainingServer, destination: str | None = "alice/maya-lora", **options: Any
) -> ReplicateTrainer:
    return ReplicateTrainer(
        server.token,
        destination,
        trainer=f"{TRAINER}:{TRAINER_VERSION}",
        base_url=f"{server.url}/v1",
        poll_interval=0.01,
        sleep=server.waits.append,
        **options,
    )


def test_trains_into_the_destination_and_downloads_the_lora(
    project: Project, server: ReplicateTrainingServer, tmp_path: Path
) -> None:
    data = training_input(project, "zip", tmp_path / "run1")
    seen: list[tuple[int, int, float | None]] = []
    ctx = LocalTrainingContext(on_progress=lambda step, total, loss: seen.append((step, total, loss)))

    result = trainer_for(server).run(SPEC, data, ctx)

    [created] = server.training_creations
    assert created["destination"] == "alice/maya-lora"
    [upload] = server.uploads
    assert upload.data == data.dataset_dir.read_bytes() and upload.content_type == "application/zip"
    model_input = created["input"]
    assert model_input["input_images"].startswith(f"{server.url}/v1/files/")
    assert {k: v for k, v in model_input.items() if k != "input_images"} == {
        "trigger_word": "ohwx",
        "autocaption": False,
        "steps": 2000,
        "lora_rank": 32,
        "learning_rate": 4e-4,
        "batch_size": 1,
        "resolution": "512",
        "optimizer": "adamw",
    }
    assert len(server.trained_on[0]) == 8
    assert seen and all(total == 2000 and loss is not None for _, total, loss in seen)
    [checkpoint] = result.checkpoints
    assert checkpoint.step == 2000 and checkpoint.path.parent == data.work_dir / "checkpoints"
    with safe_open(str(checkpoint.path), framework="numpy") as handle:  # unpacked from the .tar
        assert handle.metadata()["trigger_word"] == "ohwx"
        assert handle.get_tensor(next(iter(handle.keys()))).shape[0] in (32, 64)
    assert checkpoint.path.with_suffix(".version.txt").read_text().startswith("alice/maya-lora:")
    assert ctx.checkpoints == [checkpoint]
    assert result.cost_usd == pytest.approx(1200 * 0.001525, abs=1e-3)  # 20 minutes of H100
    [training_id] = server.trainings
    assert result.cost_usd == pytest.approx(server.billed_usd(training_id), abs=1e-4)  # recorded = billed
    trainer = trainer_for(server)
    assert trainer.paid and trainer.estimate_cost(SPEC, 8) >= server.billed_usd(training_id) > 0


def test_a_restart_resumes_the_same_training_without_paying_twice(
    project: Project, server: ReplicateTrainingServer, tmp_path: Path
) -> None:
    data = training_input(project, "zip", tmp_path / "run1")
    crashed = CrashWhileWaiting()
    with pytest.raises(SimulatedCrash):
        trainer_for(server).run(SPEC, data, crashed)
    remembered = crashed.known_remote_id()
    assert remembered in server.trainings

    restarted = LocalTrainingContext()
    restarted.remember_remote_id(remembered)
    result = trainer_for(server).run(SPEC, data, restarted)

    assert len(server.training_creations) == 1 and len(server.uploads) == 1
    assert result.checkpoints[0].path.exists()


def test_cancel_cancels_the_training_on_replicate(
    project: Project, server: ReplicateTrainingServer, tmp_path: Path
) -> None:
    data = training_input(project, "zip", tmp_path / "run1")
    server.pending_polls = 50
    with pytest.raises(TrainingCancelled):
        trainer_for(server).run(SPEC, data, LocalTrainingContext(cancel_after_step=1))
    [training_id] = server.trainings
    assert server.cancels == [training_id] and server.trainings[training_id].status == "canceled"
    billed = server.billed_usd(training_id)
    trainer_for(server).client.training(training_id)  # type: ignore[union-attr]  # time goes on …
    assert server.billed_usd(training_id) == billed  # … the bill does not


def test_a_training_running_past_its_estimate_is_cancelled(
    project: Project, server: ReplicateTrainingServer, tmp_path: Path
) -> None:
    """The estimate pays for a setup time + a worst time a step; a training still running then is cancelled."""
    data = training_input(project, "zip", tmp_path / "run1")
    server.pending_polls = 10**9
    trainer = trainer_for(server, setup_seconds=0.0, seconds_per_step=0.05)  # a 0.15 s limit for 3 steps
    short = TrainingSpec(trigger="ohwx woman", family="flux", max_steps=3)
    with pytest.raises(TrainerError, match="was still running") as failure:
        trainer.run(short, data, LocalTrainingContext())
    [training_id] = server.trainings
    assert not failure.value.transient and server.cancels == [training_id]
    assert server.trainings[training_id].status == "canceled"


def test_a_missing_destination_model_names_the_fix(
    project: Project, server: ReplicateTrainingServer, tmp_path: Path
) -> None:
    data = training_input(project, "zip", tmp_path / "run1")
    with pytest.raises(
        TrainerError, match=r"destination model bob/nothing does not exist.*replicate\.com/create"
    ):
        trainer_for(server, "bob/nothing").run(SPEC, data, LocalTrainingContext())


def test_a_failed_training_says_why(
    project: Project, server: ReplicateTrainingServer, tmp_path: Path
) -> None:
    data = training_input(project, "zip", tmp_path / "run1")
    server.fail_prediction = "CUDA out of memory"
    with pytest.raises(TrainerError, match="failed on Replicate: CUDA out of memory"):
        trainer_for(server).run(SPEC, data, LocalTrainingContext())
    with zipfile.ZipFile(data.dataset_dir) as archive:
        assert len([n for n in archive.namelist() if n.endswith(".txt")]) == 8  # our captions went along


def test_validate_and_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REPLICATE_API_TOKEN", raising=False)
    assert ReplicateTrainer.from_settings(Settings(project=tmp_path)) is None
    problems = ReplicateTrainer(None, None).validate(TrainingSpec(trigger="ohwx woman"))
    assert MISSING_TOKEN in problems and MISSING_DESTINATION in problems
    assert any("trains Flux only: set family flux" in p for p in problems)
    monkeypatch.setenv("REPLICATE_API_TOKEN", "r8_abc")
    configured = ReplicateTrainer.from_settings(
        Settings(project=tmp_path, replicate_destination="alice/maya-lora")
    )
    assert configured is not None and configured.validate(SPEC) == [] and not configured.allows_nsfw
    unpinned = ReplicateTrainer("r8_abc", "alice maya", trainer=TRAINER)
    assert any("not owner/model" in p for p in unpinned.validate(SPEC))
    assert any("needs a version" in p for p in unpinned.validate(SPEC))
