"""ostris/ai-toolkit as a trainer: render its job YAML from the run's values, run `run.py job.yaml`, follow it.

What ai-toolkit does (jobs/process/BaseSDTrainProcess.py): it saves `<training_folder>/<name>/<name>_<step:09d>
.safetensors` every `save.save_every` steps and `<name>.safetensors` at the end, with `training_info.step` in
the file's metadata; on start it loads the newest of those files and continues from that step. So a re-run of
the same YAML resumes by itself; flenwheel only keeps the folder and the name stable. Its progress bar is
tqdm with a postfix `lr: 1.0e-04 loss: 4.523e-01`.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import yaml

from flenwheel.config import Settings
from flenwheel.datasets.export import AiToolkitRun, ai_toolkit_config, exported_subsets, subset_repeats
from flenwheel.families import TRAINING_BASE_MODELS
from flenwheel.trainers.base import (
    CheckpointFile,
    DatasetFormat,
    TrainerError,
    TrainingCancelled,
    TrainingContext,
    TrainingInput,
    TrainingResult,
    TrainingSpec,
    refuse_family,
)
from flenwheel.trainers.schedule import planned_steps, steps_per_epoch
from flenwheel.trainers.subprocess_run import (
    StableFiles,
    TrainerProcess,
    failure_message,
    python_for,
    read_bar,
)

JOB_NAME = "lora"  # the file names: lora_000000250.safetensors, lora.safetensors
_STEP_FILE = re.compile(rf"{JOB_NAME}_(\d{{9}})\.safetensors")


class AiToolkitTrainer:
    """Trains through a local ai-toolkit install (FLUX, SDXL, SD1.5) in its own process; resumable."""

    id = "ai-toolkit"
    dataset_format: DatasetFormat = "ai-toolkit"
    trains = frozenset({"sd", "sdxl", "flux", "qwen-image", "qwen-image-edit", "z-image"})
    allows_nsfw = True  # runs on the user's own machine
    paid = False  # no bill: nothing to reserve

    def __init__(self, path: Path, python: Path | None = None, grace_s: float = 10.0) -> None:
        self.path = path
        self.python = python_for(python, path)
        self.grace_s = grace_s

    @classmethod
    def from_settings(cls, settings: Settings) -> AiToolkitTrainer | None:
        """The trainer when FLENWHEEL_AI_TOOLKIT_PATH is set, else None."""
        if settings.ai_toolkit_path is None:
            return None
        return cls(settings.ai_toolkit_path.expanduser(), settings.ai_toolkit_python)

    def validate(self, spec: TrainingSpec) -> list[str]:
        problems = refuse_family(self.id, self.trains, spec)
        if not (self.path / "run.py").is_file():
            problems.append(
                f"no run.py in {self.path}: set FLENWHEEL_AI_TOOLKIT_PATH to a clone of "
                "https://github.com/ostris/ai-toolkit"
            )
        if not self.python.exists():
            problems.append(
                f"python {self.python} does not exist: set FLENWHEEL_AI_TOOLKIT_PYTHON to its venv"
            )
        if spec.base_model == "tiny":
            problems.append(
                "ai-toolkit cannot train the built-in tiny model: pass --base-model (a Hugging Face id such as "
                f"{TRAINING_BASE_MODELS.get(spec.family, 'black-forest-labs/FLUX.1-dev')}, a diffusers folder or a "
                ".safetensors) or use --trainer local"
            )
        return problems

    def estimate_cost(self, spec: TrainingSpec, images: int) -> float:
        return 0.0  # the user's own GPU

    def job_config(self, spec: TrainingSpec, data: TrainingInput) -> dict[str, object]:
        """The YAML ai-toolkit runs, with this run's values (dataset folder, rank, steps, output folder…);
        a dataset with subsets (seed 002's two folders) gets one dataset entry per subset at its repeats."""
        subsets = exported_subsets(data.dataset_dir)
        spec = _with_subset_repeats(spec, subsets)
        total, every = planned_steps(spec, len(data.items))
        image_dir = data.dataset_dir / "dataset"
        control = data.dataset_dir / "control"  # Qwen-Image-Edit: each target's source image, same file name
        if spec.family == "qwen-image-edit" and not control.is_dir():
            raise TrainerError(
                self.id,
                f"Qwen-Image-Edit learns edits from (control, target) pairs: put each target's source image "
                f"in {control} under the target's file name",
            )
        run = AiToolkitRun(
            training_folder=str(data.work_dir / "ai-toolkit"),
            base_model=spec.base_model,
            family=spec.family,
            rank=spec.rank,
            alpha=spec.network_alpha,
            learning_rate=spec.learning_rate,
            optimizer=spec.optimizer,
            steps=total,
            save_every=every,
            max_step_saves_to_keep=math.ceil(total / every) + 1,  # keep every checkpoint for evaluation
            batch_size=spec.batch_size,
            resolutions=(spec.resolution,),
            num_repeats=spec.repeats,
            seed=spec.seed,
            ema_decay=spec.ema_decay if spec.ema else None,
            train_text_encoder=spec.train_text_encoder,
            control_dir=str(control) if control.is_dir() else None,
            subsets=tuple((str(folder), repeats) for folder, repeats, _ in subsets),
        )
        return ai_toolkit_config(JOB_NAME, image_dir, spec.trigger.split()[0], run)

    def run(self, spec: TrainingSpec, data: TrainingInput, ctx: TrainingContext) -> TrainingResult:
        config = self.job_config(spec, data)
        spec = _with_subset_repeats(spec, exported_subsets(data.dataset_dir))
        job_path = data.work_dir / "ai-toolkit-job.yaml"
        job_path.parent.mkdir(parents=True, exist_ok=True)
        job_path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
        save_root = data.work_dir / "ai-toolkit" / JOB_NAME
        total, _ = planned_steps(spec, len(data.items))
        per_epoch = steps_per_epoch(spec, len(data.items))
        if ctx.cancelled():
            raise TrainingCancelled(f"{self.id}: cancelled before it started")

        checkpoints: list[CheckpointFile] = []
        losses: list[tuple[int, float]] = []
        watcher = StableFiles(save_root, f"{JOB_NAME}*.safetensors")
        watcher.reported.update(save_root.glob(f"{JOB_NAME}*.safetensors"))  # earlier runs' files: known
        checkpoints.extend(_checkpoint(path, total, per_epoch) for path in sorted(watcher.reported))

        def collect() -> None:
            for path in watcher.new_stable():
                checkpoint = _checkpoint(path, total, per_epoch)
                checkpoints.append(checkpoint)
                ctx.checkpoint_saved(checkpoint)

        def on_line(line: str) -> None:
            reading = read_bar(line, "loss")
            if reading is None or reading.total != total:
                return  # caching and sampling bars have other totals
            if reading.loss is not None:
                losses.append((reading.n, reading.loss))
            ctx.progress(reading.n, total, reading.loss)

        process = TrainerProcess(
            [str(self.python), "run.py", str(job_path)],
            cwd=self.path,
            log_path=data.work_dir / "logs" / "ai-toolkit.log",
            grace_s=self.grace_s,
        )
        outcome = process.run(on_line, ctx.cancelled, on_tick=collect)
        collect()  # what landed before it exited (or was stopped) stays valid
        if outcome.cancelled:
            done = max((c.step for c in checkpoints), default=0)
            raise TrainingCancelled(
                f"{self.id}: stopped; {len(checkpoints)} checkpoints kept (last at step {done}); "
                "run it again to resume from there"
            )
        if outcome.returncode != 0:
            raise TrainerError(self.id, failure_message("ai-toolkit run.py", outcome, process.log_path))
        if not any(c.step == total for c in checkpoints):
            raise TrainerError(
                self.id,
                f"run.py finished but wrote no {JOB_NAME}.safetensors in {save_root}; see {process.log_path}",
            )
        checkpoints.sort(key=lambda c: c.step)
        return TrainingResult(checkpoints=tuple(checkpoints), losses=tuple(losses), total_steps=total)


def _with_subset_repeats(spec: TrainingSpec, subsets: list[tuple[Path, int, int]]) -> TrainingSpec:
    """The spec with the repeats that give the subsets' steps per epoch (their own repeats decide)."""
    if not subsets:
        return spec
    return spec.model_copy(update={"repeats": subset_repeats(subsets, spec.repeats)})


def _checkpoint(path: Path, total: int, per_epoch: int) -> CheckpointFile:
    found = _STEP_FILE.fullmatch(path.name)
    step = int(found.group(1)) if found else _final_step(path, total)
    epoch = step // per_epoch if step % per_epoch == 0 else None
    return CheckpointFile(path=path, step=step, epoch=epoch)


def _final_step(path: Path, total: int) -> int:
    """The final file carries its step in `training_info`; fall back to the planned total."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            info = (handle.metadata() or {}).get("training_info")
        return int(json.loads(info)["step"]) if info else total
    except (OSError, ValueError, KeyError, TypeError):
        return total
