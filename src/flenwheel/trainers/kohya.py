"""kohya-ss/sd-scripts as a trainer: dataset_config.toml + the train_network command line, run and followed.

sd-scripts (train_network.py; sdxl_/flux_train_network.py subclass it) saves `<output_name>-<epoch:06d>
.safetensors` per `--save_every_n_epochs`, `<output_name>.safetensors` at the end, and with `--save_state` an
accelerate state folder `<output_name>-<epoch:06d>-state` beside each. Resuming from one with `--resume`
restores optimizer and scheduler, but its own step counter restarts inside the epoch (kohya-ss/sd-scripts
#1406, #1999) and step-named files would collide; so flenwheel saves per epoch, resumes with `--initial_epoch`
(the epoch after the newest state) and adds that offset to the steps its progress bar shows.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from flenwheel.config import Settings
from flenwheel.datasets.export import exported_subsets, kohya_dataset_toml, kohya_subsets_toml
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
from flenwheel.trainers.subprocess_run import (
    StableFiles,
    TrainerProcess,
    failure_message,
    python_for,
    read_bar,
)

OUTPUT_NAME = "lora"
SCRIPTS = {"sd": "train_network.py", "sdxl": "sdxl_train_network.py", "flux": "flux_train_network.py"}
OPTIMIZERS = {"adamw": "AdamW", "adamw8bit": "AdamW8bit", "prodigy": "Prodigy", "sgd": "torch.optim.SGD"}
FLUX_FILES = {"ae": "ae.safetensors", "clip_l": "clip_l.safetensors", "t5xxl": "t5xxl_fp16.safetensors"}
_EPOCH_FILE = re.compile(rf"{OUTPUT_NAME}-(\d{{6}})\.safetensors")
_EPOCH_STATE = re.compile(rf"{OUTPUT_NAME}-(\d{{6}})-state")
_BATCHES = re.compile(r"num batches per epoch / .*?:\s*(\d+)")


class KohyaTrainer:
    """Trains through a local sd-scripts install (SD1.5, SDXL, FLUX) in its own process; resumable per epoch."""

    id = "kohya"
    dataset_format: DatasetFormat = "kohya"
    trains = frozenset({"sd", "sdxl", "flux"})  # training architectures (families.py)
    allows_nsfw = True  # runs on the user's own machine
    paid = False  # no bill: nothing to reserve

    def __init__(
        self,
        path: Path,
        python: Path | None = None,
        flux_models_dir: Path | None = None,
        grace_s: float = 10.0,
    ) -> None:
        self.path = path
        self.python = python_for(python, path)
        self.flux_models_dir = flux_models_dir
        self.grace_s = grace_s

    @classmethod
    def from_settings(cls, settings: Settings) -> KohyaTrainer | None:
        """The trainer when FLENWHEEL_KOHYA_PATH is set, else None."""
        if settings.kohya_path is None:
            return None
        return cls(settings.kohya_path.expanduser(), settings.kohya_python, settings.kohya_flux_models_dir)

    def validate(self, spec: TrainingSpec) -> list[str]:
        problems = refuse_family(self.id, self.trains, spec)
        if problems:
            return problems
        problems = []
        script = self.path / SCRIPTS[spec.family]
        if not script.is_file():
            problems.append(
                f"no {script.name} in {self.path}: set FLENWHEEL_KOHYA_PATH to a clone of "
                "https://github.com/kohya-ss/sd-scripts"
            )
        if not self.python.exists():
            problems.append(f"python {self.python} does not exist: set FLENWHEEL_KOHYA_PYTHON to its venv")
        if spec.base_model == "tiny":
            problems.append(
                "sd-scripts cannot train the built-in tiny model: pass --base-model (a .safetensors checkpoint, "
                "a diffusers folder or a Hugging Face id) or use --trainer local"
            )
        if spec.ema:
            problems.append("sd-scripts has no EMA for LoRA: drop --ema or use --trainer local or ai-toolkit")
        if spec.save_every_epochs is None:
            problems.append(
                "with sd-scripts flenwheel saves per epoch (its step-named files collide after a resume, "
                "kohya-ss/sd-scripts#1999): set --save-every-epochs"
            )
        if spec.family == "flux":
            folder = self.flux_models_dir
            missing = [
                name for name in FLUX_FILES.values() if folder is None or not (folder / name).is_file()
            ]
            if missing:
                problems.append(
                    f"FLUX with sd-scripts needs {', '.join(missing)}: put them in one folder and set "
                    "FLENWHEEL_KOHYA_FLUX_MODELS_DIR to it"
                )
        return problems

    def estimate_cost(self, spec: TrainingSpec, images: int) -> float:
        return 0.0  # the user's own GPU

    # -- what it runs ----------------------------------------------------------------------------------------
    def dataset_config(self, spec: TrainingSpec, data: TrainingInput) -> Path:
        """dataset_config.toml with this run's repeats, resolution, batch size and buckets."""
        subsets = exported_subsets(data.dataset_dir)
        target = data.work_dir / "kohya" / "dataset_config.toml"
        if subsets:  # seed 002's folders, each at its own repeats
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(
                kohya_subsets_toml(
                    [(folder, repeats, spec.trigger) for folder, repeats, _ in subsets],
                    resolution=spec.resolution,
                    batch_size=spec.batch_size,
                    enable_bucket=spec.buckets,
                ),
                encoding="utf-8",
            )
            return target
        folders = sorted(p for p in (data.dataset_dir / "img").iterdir() if p.is_dir())
        if len(folders) != 1:
            raise TrainerError(self.id, f"expected one image folder in {data.dataset_dir / 'img'}")
        target = data.work_dir / "kohya" / "dataset_config.toml"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(
            kohya_dataset_toml(
                folders[0],
                spec.repeats,
                spec.trigger,
                resolution=spec.resolution,
                batch_size=spec.batch_size,
                enable_bucket=spec.buckets,
            ),
            encoding="utf-8",
        )
        return target

    def command(self, spec: TrainingSpec, data: TrainingInput, resume_epoch: int | None = None) -> list[str]:
        """The sd-scripts command line (flag names as in train_network.py / library/train_util.py)."""
        dataset_config = self.dataset_config(spec, data)
        output_dir = data.work_dir / "kohya" / "output"
        flux = spec.family == "flux"
        command = [
            str(self.python),
            SCRIPTS[spec.family],
            "--pretrained_model_name_or_path", spec.base_model,
            "--dataset_config", str(dataset_config),
            "--output_dir", str(output_dir),
            "--output_name", OUTPUT_NAME,
            "--save_model_as", "safetensors",
            "--network_module", "networks.lora_flux" if flux else "networks.lora",
            "--network_dim", str(spec.rank),
            "--network_alpha", _number(spec.network_alpha),
            "--learning_rate", _number(spec.learning_rate),
            "--optimizer_type", OPTIMIZERS[spec.optimizer],
            "--seed", str(spec.seed),
            "--mixed_precision", "bf16",
            "--save_precision", "fp16",
            "--gradient_checkpointing",
            "--cache_latents_to_disk",
            "--sdpa",
            "--save_state",
            "--save_every_n_epochs", str(spec.save_every_epochs or 1),
        ]  # fmt: skip
        if spec.max_steps is not None:
            command += ["--max_train_steps", str(spec.max_steps)]  # kohya rounds up to whole epochs
        else:
            command += ["--max_train_epochs", str(spec.epochs)]
        if not spec.train_text_encoder:
            command.append("--network_train_unet_only")
        if flux:
            assert self.flux_models_dir is not None  # validate() requires it
            for flag, name in FLUX_FILES.items():
                command += [f"--{flag}", str(self.flux_models_dir / name)]
            command += [
                "--guidance_scale",
                "1.0",
                "--timestep_sampling",
                "shift",
                "--model_prediction_type",
                "raw",
            ]
        if resume_epoch is not None:
            state = output_dir / f"{OUTPUT_NAME}-{resume_epoch:06d}-state"
            command += ["--resume", str(state), "--initial_epoch", str(resume_epoch + 1)]
        return command

    # -- the run ---------------------------------------------------------------------------------------------
    def run(self, spec: TrainingSpec, data: TrainingInput, ctx: TrainingContext) -> TrainingResult:
        output_dir = data.work_dir / "kohya" / "output"
        output_dir.mkdir(parents=True, exist_ok=True)
        per_epoch = max(1, math.ceil(len(data.items) * spec.repeats / spec.batch_size))
        final = output_dir / f"{OUTPUT_NAME}.safetensors"
        watcher = StableFiles(output_dir, f"{OUTPUT_NAME}*.safetensors")
        watcher.reported.update(output_dir.glob(f"{OUTPUT_NAME}*.safetensors"))
        plan = _Plan(spec, per_epoch)
        checkpoints = [plan.checkpoint(path) for path in sorted(watcher.reported)]
        if final.exists() and (output_dir / f"{OUTPUT_NAME}-state").is_dir():
            return self._result(checkpoints, [], plan)  # finished before; nothing to run
        if ctx.cancelled():
            raise TrainingCancelled(f"{self.id}: cancelled before it started")
        resume_epoch = _newest_state_epoch(output_dir)
        plan.offset_epochs = resume_epoch or 0
        losses: list[tuple[int, float]] = []

        def collect() -> None:
            for path in watcher.new_stable():
                checkpoint = plan.checkpoint(path)
                checkpoints.append(checkpoint)
                ctx.checkpoint_saved(checkpoint)

        def on_line(line: str) -> None:
            if found := _BATCHES.search(line):
                plan.per_epoch = int(found.group(1))  # sd-scripts' own count (buckets may round up)
                return
            if not line.lstrip().startswith("steps:"):
                return  # validation and caching bars
            reading = read_bar(line, "avr_loss")
            if reading is None:
                return
            step, total = plan.offset + reading.n, plan.offset + reading.total
            if reading.loss is not None:
                losses.append((step, reading.loss))
            ctx.progress(step, total, reading.loss)

        process = TrainerProcess(
            self.command(spec, data, resume_epoch),
            cwd=self.path,
            log_path=data.work_dir / "logs" / "kohya.log",
            grace_s=self.grace_s,
        )
        outcome = process.run(on_line, ctx.cancelled, on_tick=collect)
        collect()  # what landed before it exited (or was stopped) stays valid
        if outcome.cancelled:
            raise TrainingCancelled(
                f"{self.id}: stopped; {len(checkpoints)} checkpoints kept; run it again to resume from the "
                "last saved epoch"
            )
        if outcome.returncode != 0:
            raise TrainerError(
                self.id, failure_message(f"sd-scripts {SCRIPTS[spec.family]}", outcome, process.log_path)
            )
        if not final.exists():
            raise TrainerError(
                self.id, f"sd-scripts finished but wrote no {final.name}; see {process.log_path}"
            )
        return self._result(checkpoints, losses, plan)

    def _result(
        self, checkpoints: list[CheckpointFile], losses: list[tuple[int, float]], plan: _Plan
    ) -> TrainingResult:
        ordered = tuple(sorted(checkpoints, key=lambda c: c.step))
        total = ordered[-1].step if ordered else plan.total_steps
        return TrainingResult(checkpoints=ordered, losses=tuple(losses), total_steps=total)


class _Plan:
    """Epoch ↔ step bookkeeping for one run (per_epoch is corrected from sd-scripts' own log line)."""

    def __init__(self, spec: TrainingSpec, per_epoch: int) -> None:
        self.spec = spec
        self.per_epoch = per_epoch
        self.offset_epochs = 0

    @property
    def offset(self) -> int:
        return self.offset_epochs * self.per_epoch

    @property
    def epochs(self) -> int:
        if self.spec.max_steps is not None:
            return math.ceil(self.spec.max_steps / self.per_epoch)
        return self.spec.epochs

    @property
    def total_steps(self) -> int:
        return self.spec.max_steps if self.spec.max_steps is not None else self.epochs * self.per_epoch

    def checkpoint(self, path: Path) -> CheckpointFile:
        found = _EPOCH_FILE.fullmatch(path.name)
        if found:
            epoch = int(found.group(1))
            return CheckpointFile(path=path, step=epoch * self.per_epoch, epoch=epoch)
        return CheckpointFile(path=path, step=self.total_steps, epoch=self.epochs)


def _newest_state_epoch(output_dir: Path) -> int | None:
    epochs = [
        int(found.group(1))
        for path in output_dir.iterdir()
        if path.is_dir() and (found := _EPOCH_STATE.fullmatch(path.name))
    ]
    return max(epochs, default=None)


def _number(value: float) -> str:
    return f"{value:g}"
