"""AiToolkitTrainer against a stand-in run.py: the real trainer needs CUDA and cannot be installed here.

The stand-in (standins/ai_toolkit_run.py) reads the job YAML strictly, prints ai-toolkit's progress bar and
writes small real .safetensors files where and how ai-toolkit does, resuming from the newest one as it does.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open
from trainer_data import built_project, training_input

from flenwheel.config import Settings
from flenwheel.store.project import Project
from flenwheel.trainers.ai_toolkit import AiToolkitTrainer
from flenwheel.trainers.base import (
    LocalTrainingContext,
    TrainerError,
    TrainingCancelled,
    TrainingSpec,
)

from patience import HANG_S

STANDIN = Path(__file__).parent / "standins" / "ai_toolkit_run.py"
SPEC = TrainingSpec(
    trigger="ohwx woman",
    base_model="black-forest-labs/FLUX.1-dev",
    family="flux",
    rank=8,
    alpha=4,
    learning_rate=2e-4,
    epochs=2,
    repeats=1,
    save_every_steps=4,
    seed=7,
)  # 8 images × 1 repeat = 8 steps an epoch: 16 steps, checkpoints at 4, 8, 12 and the final 16


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    return built_project(tmp_path_factory.mktemp("ait") / "project")


@pytest.fixture
def trainer(tmp_path: Path) -> AiToolkitTrainer:
    install = tmp_path / "ai-toolkit"
    install.mkdir()
    shutil.copy(STANDIN, install / "run.py")
    return AiToolkitTrainer(install, Path(sys.executable))


def test_job_yaml_carries_the_run_values(project: Project, trainer: AiToolkitTrainer, tmp_path: Path) -> None:
    data = training_input(project, "ai-toolkit", tmp_path / "run1")
    trainer.run(SPEC, data, LocalTrainingContext())

    config = yaml.safe_load((data.work_dir / "ai-toolkit-job.yaml").read_text())
    [process] = config["config"]["process"]
    assert config["config"]["name"] == "lora"
    assert Path(process["training_folder"]) == data.work_dir / "ai-toolkit"
    assert process["trigger_word"] == "ohwx" and process["training_seed"] == 7
    assert process["network"] == {"type": "lora", "linear": 8, "linear_alpha": 4.0}
    assert process["train"]["lr"] == 2e-4 and process["train"]["steps"] == 16
    assert process["save"]["save_every"] == 4 and process["save"]["max_step_saves_to_keep"] >= 5
    assert process["model"] == {
        "name_or_path": "black-forest-labs/FLUX.1-dev",
        "is_flux": True,
        "quantize": True,
    }
    [dataset] = process["datasets"]
    assert dataset["resolution"] == [512] and dataset["num_repeats"] == 1
    captions = sorted(Path(dataset["folder_path"]).glob("*.txt"))
    assert len(captions) == 8 and all("[trigger]" in c.read_text() for c in captions)
    assert all("[trigger]" in prompt for prompt in process["sample"]["prompts"])


def test_sdxl_job_names_the_architecture(trainer: AiToolkitTrainer, project: Project, tmp_path: Path) -> None:
    data = training_input(project, "ai-toolkit", tmp_path / "run1")
    spec = SPEC.model_copy(update={"family": "sdxl", "base_model": "/models/sdxl.safetensors"})
    process = trainer.job_config(spec, data)["config"]["process"][0]  # type: ignore[index]
    assert process["model"] == {"name_or_path": "/models/sdxl.safetensors", "is_xl": True}
    assert process["train"]["noise_scheduler"] == "ddpm"


def test_progress_and_every_checkpoint_are_reported(
    project: Project, trainer: AiToolkitTrainer, tmp_path: Path
) -> None:
    data = training_input(project, "ai-toolkit", tmp_path / "run1")
    seen: list[tuple[int, int, float | None]] = []
    ctx = LocalTrainingContext(on_progress=lambda step, total, loss: seen.append((step, total, loss)))

    result = trainer.run(SPEC, data, ctx)

    assert [step for step, _, _ in seen] == list(range(1, 17))
    assert all(total == 16 and loss is not None and 0 < loss < 1 for _, total, loss in seen)
    assert [c.step for c in result.checkpoints] == [4, 8, 12, 16]
    assert [c.epoch for c in result.checkpoints] == [None, 1, None, 2]
    assert sorted(c.step for c in ctx.checkpoints) == [4, 8, 12, 16]  # each reported as it landed
    assert result.checkpoints[-1].path.name == "lora.safetensors" and result.total_steps == 16
    for checkpoint in result.checkpoints:
        with safe_open(str(checkpoint.path), framework="numpy") as handle:
            assert handle.keys()  # a real, complete safetensors file
    assert (data.work_dir / "logs" / "ai-toolkit.log").read_text().count("loss:") >= 16


def test_cancel_kills_the_trainer_and_a_rerun_resumes(
    project: Project, trainer: AiToolkitTrainer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = training_input(project, "ai-toolkit", tmp_path / "run1")
    pid_file = tmp_path / "trainer.pid"
    monkeypatch.setenv("STANDIN_PID_FILE", str(pid_file))
    monkeypatch.setenv("STANDIN_HANG_AT_STEP", "9")  # step 10 of 16 printed, then it keeps "training"
    first = LocalTrainingContext(cancel_after_step=10)
    outcome: list[BaseException] = []

    def train() -> None:
        try:
            trainer.run(SPEC, data, first)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=train)
    worker.start()
    worker.join(timeout=HANG_S)
    assert not worker.is_alive(), "cancel did not stop the trainer"
    assert len(outcome) == 1 and isinstance(outcome[0], TrainingCancelled)
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)  # the process is gone, not orphaned
    assert sorted(c.step for c in first.checkpoints) == [4, 8]

    monkeypatch.delenv("STANDIN_HANG_AT_STEP")
    second_steps: list[int] = []
    second = LocalTrainingContext(on_progress=lambda step, total, loss: second_steps.append(step))
    result = trainer.run(SPEC, data, second)
    assert second_steps[0] == 9  # resumed from the step-8 checkpoint, not from 0
    assert [c.step for c in result.checkpoints] == [4, 8, 12, 16]
    assert sorted(c.step for c in second.checkpoints) == [12, 16]  # nothing reported twice


def test_a_trainer_that_ignores_sigterm_is_killed_after_the_grace_period(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install = tmp_path / "ai-toolkit"
    install.mkdir()
    shutil.copy(STANDIN, install / "run.py")
    stubborn = AiToolkitTrainer(install, Path(sys.executable), grace_s=0.5)
    data = training_input(project, "ai-toolkit", tmp_path / "run1")
    pid_file = tmp_path / "trainer.pid"
    monkeypatch.setenv("STANDIN_PID_FILE", str(pid_file))
    monkeypatch.setenv("STANDIN_IGNORE_SIGTERM", "1")
    monkeypatch.setenv("STANDIN_HANG_AT_STEP", "2")
    with pytest.raises(TrainingCancelled):
        stubborn.run(SPEC, data, LocalTrainingContext(cancel_after_step=3))
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


def test_a_failing_trainer_shows_its_last_lines(
    project: Project, trainer: AiToolkitTrainer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = training_input(project, "ai-toolkit", tmp_path / "run1")
    monkeypatch.setenv("STANDIN_FAIL_AT_STEP", "6")
    with pytest.raises(TrainerError) as failure:
        trainer.run(SPEC, data, LocalTrainingContext())
    assert "CUDA out of memory" in str(failure.value) and "exited with code 1" in str(failure.value)
    assert not failure.value.transient


def test_a_misnamed_key_is_refused_like_a_typo_in_the_yaml(
    project: Project, trainer: AiToolkitTrainer, tmp_path: Path
) -> None:
    data = training_input(project, "ai-toolkit", tmp_path / "run1")
    (trainer.path / "run.py").write_text(
        STANDIN.read_text().replace('"linear_alpha", ', "")  # as if ai-toolkit had renamed it
    )
    with pytest.raises(TrainerError, match="unknown keys \\['linear_alpha'\\]"):
        trainer.run(SPEC, data, LocalTrainingContext())


def test_validate_and_settings(tmp_path: Path) -> None:
    assert AiToolkitTrainer.from_settings(Settings(project=tmp_path)) is None
    configured = AiToolkitTrainer.from_settings(
        Settings(project=tmp_path, ai_toolkit_path=tmp_path / "nowhere")
    )
    assert configured is not None
    problems = configured.validate(TrainingSpec(trigger="ohwx woman"))
    assert any("no run.py in" in p and "FLENWHEEL_AI_TOOLKIT_PATH" in p for p in problems)
    assert any("tiny model" in p and "--base-model" in p for p in problems)


def test_a_checkpoint_still_being_written_is_not_reported(tmp_path: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    from flenwheel.trainers.subprocess_run import StableFiles

    whole = tmp_path / "lora_000000004.safetensors"
    save_file({"a": np.ones((64, 64), np.float16)}, str(whole), metadata={"training_info": "{}"})
    partial = tmp_path / "lora_000000008.safetensors"
    partial.write_bytes(whole.read_bytes()[:-100])  # as a trainer leaves it mid-write
    watcher = StableFiles(tmp_path, "lora*.safetensors")
    assert watcher.new_stable() == [whole]
    partial.write_bytes(whole.read_bytes())
    assert watcher.new_stable() == [partial] and watcher.new_stable() == []


def test_flenwheel_train_records_checkpoints_and_a_rerun_after_a_crash_resumes(
    project: Project, trainer: AiToolkitTrainer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flenwheel.pipeline.training import train_character

    settings = {"base_model": "black-forest-labs/FLUX.1-dev", "family": "flux", "epochs": 2, "repeats": 1}
    settings["save_every_steps"] = 4
    monkeypatch.setenv("STANDIN_FAIL_AT_STEP", "10")  # the GPU runs out of memory at step 10
    with pytest.raises(TrainerError, match="CUDA out of memory"):
        train_character(project, "lisa", trainer, **settings)

    monkeypatch.delenv("STANDIN_FAIL_AT_STEP")
    outcome = train_character(project, "lisa", trainer, **settings)

    assert outcome.resumed and outcome.status == "succeeded" and outcome.steps == 16
    assert [c["step"] for c in outcome.checkpoints] == [4, 8, 12, 16]
    assert all((project.root / c["path"]).is_file() for c in outcome.checkpoints)
    log = (outcome.work_dir / "logs" / "ai-toolkit.log").read_text()
    assert "Found step 8 in metadata, starting from there" in log  # ai-toolkit continued, not restarted


def test_qwen_z_image_and_flux_jobs_carry_seed_002s_settings_and_run(
    project: Project, trainer: AiToolkitTrainer, tmp_path: Path
) -> None:
    """Each architecture's YAML read the way ai-toolkit reads it (the stand-in refuses keys its config classes
    do not read, an `arch` no extension registers, a quantisation type get_qtype lacks) and run."""
    from flenwheel.families import SEED_002_TRAINING, TRAINING_BASE_MODELS

    seed_002 = {
        "rank": 16,
        "alpha": 16.0,
        "learning_rate": 2e-4,
        "optimizer": "adamw8bit",
        "ema": True,
        "ema_decay": 0.999,
    }
    assert {key: SEED_002_TRAINING[key] for key in seed_002} == seed_002
    expected = {"qwen-image": "qwen_image", "qwen-image-edit": "qwen_image_edit_plus", "z-image": "zimage"}
    for family, arch in expected.items():
        work = tmp_path / family
        data = training_input(project, "ai-toolkit", work)
        if family == "qwen-image-edit":  # (control, target) pairs: the source image of each target
            with pytest.raises(TrainerError, match="control"):
                trainer.job_config(SPEC.model_copy(update={"family": family}), data)
            shutil.copytree(data.dataset_dir / "dataset", data.dataset_dir / "control")
        spec = SPEC.model_copy(
            update={
                "family": family,
                "base_model": TRAINING_BASE_MODELS[family],
                **seed_002,
                "resolution": 512,
            }
        )
        result = trainer.run(spec, data, LocalTrainingContext())
        assert result.total_steps == 16 and result.checkpoints[-1].step == 16

        [process] = yaml.safe_load((work / "ai-toolkit-job.yaml").read_text())["config"]["process"]
        model = process["model"]
        assert model["arch"] == arch and model["quantize"] and model["qtype"] == "qint8"  # seed 002: int8
        assert model["name_or_path"] == TRAINING_BASE_MODELS[family]
        assert process["network"] == {"type": "lora", "linear": 16, "linear_alpha": 16.0}
        train = process["train"]
        assert (train["lr"], train["optimizer"], train["noise_scheduler"]) == (2e-4, "adamw8bit", "flowmatch")
        assert train["ema_config"] == {"use_ema": True, "ema_decay": 0.999}
        [dataset] = process["datasets"]
        assert ("control_path" in dataset) == (family == "qwen-image-edit")
        if family == "z-image":  # trained through the de-distillation adapter, sampled as Turbo runs
            assert model["assistant_lora_path"].startswith("ostris/zimage_turbo_training_adapter/")
            assert (process["sample"]["sample_steps"], process["sample"]["guidance_scale"]) == (9, 1.0)

    refused = SPEC.model_copy(update={"family": "z-image"})
    from flenwheel.trainers.base import refuse_family
    from flenwheel.trainers.fal import FalTrainer
    from flenwheel.trainers.kohya import KohyaTrainer

    assert any("not z-image" in problem for problem in FalTrainer("k").validate(refused))
    [problem] = refuse_family("kohya", KohyaTrainer.trains, refused)
    assert "kohya does not train z-image" in problem and "--trainer ai-toolkit" in problem
    assert trainer.validate(refused.model_copy(update={"base_model": "tiny"})) == [
        f"ai-toolkit cannot train the built-in tiny model: pass --base-model (a Hugging Face id such as "
        f"{TRAINING_BASE_MODELS['z-image']}, a diffusers folder or a .safetensors) or use --trainer local"
    ]


def test_seed_002s_defaults_fill_only_what_the_user_left_unset(project: Project) -> None:
    from trainer_data import CHARACTER

    from flenwheel.datasets.versions import get_dataset_version
    from flenwheel.pipeline.training import training_spec

    version = get_dataset_version(project, CHARACTER)
    qwen = training_spec(project, CHARACTER, version, family="qwen-image-edit", learning_rate=5e-5)
    assert (qwen.rank, qwen.network_alpha, qwen.optimizer, qwen.ema, qwen.ema_decay) == (
        16,
        16.0,
        "adamw8bit",
        True,
        0.999,
    )
    assert qwen.learning_rate == 5e-5 and qwen.resolution == 1024  # the user's own value wins
    sd = training_spec(project, CHARACTER, version, family="sd")
    assert (sd.learning_rate, sd.optimizer, sd.ema) == (1e-4, "adamw", False)  # unchanged for the SD family
