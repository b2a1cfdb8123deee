"""KohyaTrainer against a stand-in train_network.py: the real trainer needs CUDA and cannot be installed here.

The stand-in (standins/kohya_train_network.py) refuses unknown flags and TOML keys as sd-scripts does, prints
its "steps:" bar, writes small real .safetensors per epoch plus accelerate-style state folders, and resumes
the way train_network.py does (its own step counter restarting at 0).
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import tomllib
from pathlib import Path

import pytest
from safetensors import safe_open
from trainer_data import built_project, training_input

from flenwheel.config import Settings
from flenwheel.store.project import Project
from flenwheel.trainers.base import LocalTrainingContext, TrainerError, TrainingCancelled, TrainingSpec
from flenwheel.trainers.kohya import KohyaTrainer

from patience import HANG_S

STANDIN = Path(__file__).parent / "standins" / "kohya_train_network.py"
SPEC = TrainingSpec(
    trigger="ohwx woman",
    base_model="/models/sd15.safetensors",
    rank=8,
    alpha=4,
    learning_rate=3e-4,
    optimizer="adamw8bit",
    epochs=3,
    repeats=2,
    resolution=512,
    seed=11,
)  # 8 images × 2 repeats = 16 steps an epoch: checkpoints at 16, 32 and the final 48


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    return built_project(tmp_path_factory.mktemp("kohya") / "project")


@pytest.fixture
def trainer(tmp_path: Path) -> KohyaTrainer:
    install = tmp_path / "sd-scripts"
    install.mkdir()
    for script in ("train_network.py", "sdxl_train_network.py", "flux_train_network.py"):
        shutil.copy(STANDIN, install / script)
    flux_models = tmp_path / "flux"
    flux_models.mkdir()
    for name in ("ae.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors"):
        (flux_models / name).write_bytes(b"")
    return KohyaTrainer(install, Path(sys.executable), flux_models_dir=flux_models)


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def run_in_thread(trainer: KohyaTrainer, spec: TrainingSpec, data, ctx) -> BaseException | None:
    outcome: list[BaseException] = []

    def train() -> None:
        try:
            trainer.run(spec, data, ctx)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=train)
    worker.start()
    worker.join(timeout=HANG_S)
    assert not worker.is_alive(), "cancel did not stop the trainer"
    return outcome[0] if outcome else None


def test_command_line_and_dataset_config(project: Project, trainer: KohyaTrainer, tmp_path: Path) -> None:
    data = training_input(project, "kohya", tmp_path / "run1")
    command = trainer.command(SPEC, data)

    assert command[1] == "train_network.py"
    assert flag(command, "--pretrained_model_name_or_path") == "/models/sd15.safetensors"
    assert flag(command, "--network_module") == "networks.lora"
    assert (flag(command, "--network_dim"), flag(command, "--network_alpha")) == ("8", "4")
    assert flag(command, "--learning_rate") == "0.0003" and flag(command, "--optimizer_type") == "AdamW8bit"
    assert flag(command, "--max_train_epochs") == "3" and flag(command, "--save_every_n_epochs") == "1"
    assert flag(command, "--seed") == "11" and flag(command, "--save_model_as") == "safetensors"
    assert "--save_state" in command and "--resume" not in command
    assert Path(flag(command, "--output_dir")) == data.work_dir / "kohya" / "output"
    config = tomllib.loads(Path(flag(command, "--dataset_config")).read_text())
    [dataset] = config["datasets"]
    [subset] = dataset["subsets"]
    assert (dataset["resolution"], dataset["batch_size"], dataset["enable_bucket"]) == (512, 1, True)
    assert subset["num_repeats"] == 2 and subset["class_tokens"] == "ohwx woman"
    assert subset["caption_extension"] == ".txt"  # kohya's default would be .caption
    assert len(list(Path(subset["image_dir"]).glob("*.txt"))) == 8


def test_flux_and_sdxl_use_their_scripts(project: Project, trainer: KohyaTrainer, tmp_path: Path) -> None:
    data = training_input(project, "kohya", tmp_path / "run1")
    flux = trainer.command(SPEC.model_copy(update={"family": "flux"}), data)
    assert flux[1] == "flux_train_network.py" and flag(flux, "--network_module") == "networks.lora_flux"
    assert Path(flag(flux, "--t5xxl")).name == "t5xxl_fp16.safetensors"
    assert trainer.command(SPEC.model_copy(update={"family": "sdxl"}), data)[1] == "sdxl_train_network.py"


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_progress_and_every_epoch_checkpoint_are_reported(
    project: Project, trainer: KohyaTrainer, tmp_path: Path, family: str
) -> None:
    data = training_input(project, "kohya", tmp_path / "run1")
    seen: list[tuple[int, int, float | None]] = []
    ctx = LocalTrainingContext(on_progress=lambda step, total, loss: seen.append((step, total, loss)))

    result = trainer.run(SPEC.model_copy(update={"family": family}), data, ctx)

    assert [step for step, _, _ in seen] == list(range(1, 49))
    assert all(total == 48 and loss is not None for _, total, loss in seen)
    assert [(c.step, c.epoch) for c in result.checkpoints] == [(16, 1), (32, 2), (48, 3)]
    assert sorted(c.step for c in ctx.checkpoints) == [16, 32, 48]
    assert result.checkpoints[-1].path.name == "lora.safetensors" and result.total_steps == 48
    for checkpoint in result.checkpoints:
        with safe_open(str(checkpoint.path), framework="numpy") as handle:
            assert handle.keys()


def test_cancel_twice_and_resume_twice_continues_the_count(
    project: Project, trainer: KohyaTrainer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = training_input(project, "kohya", tmp_path / "run1")
    pid_file = tmp_path / "trainer.pid"
    monkeypatch.setenv("STANDIN_PID_FILE", str(pid_file))

    monkeypatch.setenv("STANDIN_HANG_AT_STEP", "20")
    first = LocalTrainingContext(cancel_after_step=20)
    assert isinstance(run_in_thread(trainer, SPEC, data, first), TrainingCancelled)
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)  # killed, not orphaned
    assert [c.step for c in first.checkpoints] == [16]

    monkeypatch.setenv("STANDIN_HANG_AT_STEP", "40")
    second_steps: list[int] = []
    second = LocalTrainingContext(
        on_progress=lambda step, total, loss: second_steps.append(step), cancel_after_step=40
    )
    assert isinstance(run_in_thread(trainer, SPEC, data, second), TrainingCancelled)
    assert second_steps[0] == 17  # from the epoch-1 state, not from step 0
    assert [c.step for c in second.checkpoints] == [32]

    monkeypatch.delenv("STANDIN_HANG_AT_STEP")
    third_steps: list[int] = []
    third = LocalTrainingContext(on_progress=lambda step, total, loss: third_steps.append(step))
    result = trainer.run(SPEC, data, third)
    assert (third_steps[0], third_steps[-1]) == (33, 48)  # the epoch-2 state, whose own count was relative
    assert [c.step for c in result.checkpoints] == [16, 32, 48]
    command_log = (data.work_dir / "logs" / "kohya.log").read_text()
    assert "--initial_epoch 3" in command_log


def test_a_failing_trainer_shows_its_last_lines(
    project: Project, trainer: KohyaTrainer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = training_input(project, "kohya", tmp_path / "run1")
    monkeypatch.setenv("STANDIN_FAIL_AT_STEP", "5")
    with pytest.raises(TrainerError, match="CUDA out of memory") as failure:
        trainer.run(SPEC, data, LocalTrainingContext())
    assert "exited with code 1" in str(failure.value)


def test_an_unknown_flag_is_refused_as_sd_scripts_would(
    project: Project, trainer: KohyaTrainer, tmp_path: Path
) -> None:
    data = training_input(project, "kohya", tmp_path / "run1")
    script = trainer.path / "train_network.py"
    script.write_text(STANDIN.read_text().replace('"network_train_unet_only", ', ""))
    with pytest.raises(TrainerError, match="unrecognized arguments: --network_train_unet_only"):
        trainer.run(SPEC, data, LocalTrainingContext())


def test_validate_and_settings(tmp_path: Path) -> None:
    assert KohyaTrainer.from_settings(Settings(project=tmp_path)) is None
    configured = KohyaTrainer.from_settings(Settings(project=tmp_path, kohya_path=tmp_path / "nowhere"))
    assert configured is not None
    problems = configured.validate(TrainingSpec(trigger="ohwx woman", family="flux", ema=True))
    assert any("no flux_train_network.py" in p and "FLENWHEEL_KOHYA_PATH" in p for p in problems)
    assert any("tiny model" in p for p in problems) and any("EMA" in p for p in problems)
    assert any("FLENWHEEL_KOHYA_FLUX_MODELS_DIR" in p for p in problems)
