"""Train a character LoRA: dataset version → trainer → checkpoints recorded in the store, resumable.

`train_character` is the plain function the CLI and the job workers call. A run keeps its folder
(`<project>/training/<character id>/run<N>/`) and its row in `training_run`; calling it again for the same
character, dataset version, trainer and spec continues the unfinished run instead of starting over.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from flenwheel.datasets.export import default_repeats, export_dataset
from flenwheel.datasets.versions import get_dataset_version
from flenwheel.errors import InvalidInput
from flenwheel.families import TRAINING_DEFAULTS
from flenwheel.jobs.base import JobContext
from flenwheel.store.models import Asset, Checkpoint, CorrectionSet, DatasetVersion, TrainingRun
from flenwheel.store.project import Project, get_character
from flenwheel.store.run import BudgetExceeded, PolicyRefused, RunContext, is_paid
from flenwheel.trainers.base import (
    CheckpointFile,
    Trainer,
    TrainingCancelled,
    TrainingImage,
    TrainingInput,
    TrainingResult,
    TrainingSpec,
)

TRAINING_DIR = "training"
UNFINISHED = ("pending", "running", "failed", "cancelled")
ProgressCallback = Callable[[int, int, float | None], None]


@dataclass(frozen=True)
class TrainingOutcome:
    run_id: int
    trainer: str
    dataset_version: str
    status: str
    steps: int
    checkpoints: list[dict[str, Any]]  # {"id", "step", "epoch", "path"}
    final_loss: float | None
    resumed: bool
    cost_usd: float
    work_dir: Path


def training_spec(
    project: Project, character_name: str, version: DatasetVersion | CorrectionSet, **overrides: Any
) -> TrainingSpec:
    """The character's trigger and the dataset's repeats, plus the user's overrides; bad values name the fix."""
    with project.db.session() as session:
        character = get_character(session, character_name)
        trigger = f"{character.token} {character.class_word}"
    values: dict[str, Any] = {"trigger": trigger, "repeats": default_repeats(len(version.items))}
    values.update(TRAINING_DEFAULTS.get(str(overrides.get("family")), {}))  # seed 002's, for its families
    values.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return TrainingSpec(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'spec'}: {error['msg']}" for error in exc.errors()
        )
        raise InvalidInput(f"training settings are not valid: {problems}") from None


@dataclass(frozen=True)
class TrainingSource:
    """What a run trains from: a dataset version (a character LoRA) or a correction set (an editor LoRA).
    Exactly one of the two ids is set; `prepare(trainer, work_dir)` writes the trainer's input once."""

    label: str  # "v3" / "c1"
    images: int
    dataset_version_id: int | None
    correction_set_id: int | None
    prepare: Callable[[Trainer, Path], TrainingInput]

    def runs(self) -> Any:
        """The WHERE clause that finds this source's runs."""
        if self.dataset_version_id is not None:
            return TrainingRun.dataset_version_id == self.dataset_version_id
        return TrainingRun.correction_set_id == self.correction_set_id


def train_character(
    project: Project,
    character_name: str,
    trainer: Trainer,
    version_number: int | None = None,
    ctx: JobContext | None = None,
    on_progress: ProgressCallback | None = None,
    reuse_finished: bool = False,
    **spec_overrides: Any,
) -> TrainingOutcome:
    """Train (or resume training) a LoRA of the character on one dataset version through `trainer`.

    `reuse_finished`: when a run with these exact settings already succeeded on this dataset version, return
    it instead of training again (the background chain, retried after a crash, must not train twice).
    """
    version = get_dataset_version(project, character_name, version_number)
    spec = training_spec(project, character_name, version, **spec_overrides)
    source = TrainingSource(
        version.label,
        len(version.items),
        version.id,
        None,
        lambda chosen, work_dir: _prepare_input(project, character_name, version, chosen, work_dir),
    )
    return _train(project, character_name, trainer, source, spec, ctx, on_progress, reuse_finished)


# Training architectures that learn edits from (source, instruction, target) triplets (families.py).
EDITOR_FAMILIES = ("qwen-image-edit",)


def train_editor(
    project: Project,
    character_name: str,
    trainer: Trainer,
    set_number: int | None = None,
    ctx: JobContext | None = None,
    on_progress: ProgressCallback | None = None,
    reuse_finished: bool = False,
    **spec_overrides: Any,
) -> TrainingOutcome:
    """Train (or resume) an editor LoRA (seed 001 step 2.2) on one correction set (the newest by default).

    The family defaults to Qwen-Image-Edit-2509 (`qwen-image-edit`, base model Qwen/Qwen-Image-Edit-2509); the
    trainer receives each triplet's corrected image as the target, its instruction as the caption and its source
    as the control image, in its own format (ai-toolkit: `dataset/` + `control/`; fal: start/end pairs).
    Raises InvalidInput for a family that does not edit, or a trainer whose format holds no control images."""
    from flenwheel.datasets.corrections import EDITOR_BASE_MODEL, get_triplet_set

    corrections = get_triplet_set(project, character_name, set_number)
    family = spec_overrides.get("family") or EDITOR_FAMILIES[0]
    if family not in EDITOR_FAMILIES:
        raise InvalidInput(
            f"an editor LoRA learns from (source, instruction, target) triplets; family {family!r} does not edit: "
            f"use --family {EDITOR_FAMILIES[0]}"
        )
    spec_overrides["family"] = family
    spec_overrides["base_model"] = spec_overrides.get("base_model") or EDITOR_BASE_MODEL
    spec = training_spec(project, character_name, corrections, **spec_overrides)
    source = TrainingSource(
        corrections.label,
        len(corrections.items),
        None,
        corrections.id,
        lambda chosen, work_dir: _prepare_editor_input(
            project, character_name, corrections, chosen, work_dir
        ),
    )
    return _train(project, character_name, trainer, source, spec, ctx, on_progress, reuse_finished)


def _train(
    project: Project,
    character_name: str,
    trainer: Trainer,
    source: TrainingSource,
    spec: TrainingSpec,
    ctx: JobContext | None,
    on_progress: ProgressCallback | None,
    reuse_finished: bool,
) -> TrainingOutcome:
    problems = trainer.validate(spec)
    if problems:
        raise InvalidInput(f"trainer {trainer.id!r} cannot run this: " + "; ".join(problems))
    if reuse_finished:
        finished = _finished_run(project, source, trainer.id, spec)
        if finished is not None:
            return outcome(project, finished, resumed=True)
    with project.db.session() as session:
        character = get_character(session, character_name)
        character_id, character_nsfw = character.id, character.nsfw
    if character_nsfw and not trainer.allows_nsfw:  # before anything is exported or uploaded
        raise PolicyRefused(
            f"{character_name!r} is an NSFW character and trainer {trainer.id!r} sends the dataset off your "
            f"machines: NSFW datasets are trained only on self-hosted trainers (local, ai-toolkit, kohya)"
        )
    run, resumed = _find_or_create_run(project, character_name, source, trainer.id, spec)
    if ctx is None:
        ctx = RunContext(project.db, character_id=character_id)
    ctx = ctx.for_character(character_id, project.db)
    recorder = RunRecorder(project, run.id, ctx, on_progress)
    try:
        call = ctx.call(
            trainer.id,
            f"train:run{run.id}",
            estimate=trainer.estimate_cost(spec, source.images),
            paid=is_paid(trainer),
            what=f"training {character_name} with {trainer.id}",
        ).on_training(recorder.step, recorder.checkpoint_saved)
    except BudgetExceeded as exc:
        _set_status(project, run.id, "failed", error=str(exc))
        raise
    work_dir = project.root / run.work_dir
    data = source.prepare(trainer, work_dir)
    _set_status(project, run.id, "running")
    try:
        result = trainer.run(spec, data, call)
    except TrainingCancelled:
        recorder.flush()
        call.release()  # money back unless the remote side accepted it (then kept until settled)
        _set_status(project, run.id, "cancelled")
        raise
    except BaseException as exc:
        recorder.flush()
        call.release()
        _set_status(project, run.id, "failed", error=str(exc))
        raise
    for checkpoint in result.checkpoints:
        recorder.checkpoint_saved(checkpoint)  # idempotent; covers trainers that only report at the end
    recorder.flush()
    with call.transaction() as session:
        _finish(session, run.id, result)
        call.settle(result.cost_usd, session=session)
    return outcome(project, run.id, resumed=resumed)


def outcome(project: Project, run_id: int, resumed: bool = False) -> TrainingOutcome:
    with project.db.session() as session:
        run = session.get_one(TrainingRun, run_id)
        trained_from: DatasetVersion | CorrectionSet = (
            session.get_one(DatasetVersion, run.dataset_version_id)
            if run.dataset_version_id is not None
            else session.get_one(CorrectionSet, run.correction_set_id)
        )
        checkpoints = [
            {"id": c.id, "step": c.step, "epoch": c.epoch, "path": c.path} for c in run.checkpoints
        ]
        final_loss = float(run.losses[-1][1]) if run.losses else None
        return TrainingOutcome(
            run_id=run.id,
            trainer=run.trainer,
            dataset_version=trained_from.label,
            status=run.status,
            steps=run.step,
            checkpoints=checkpoints,
            final_loss=final_loss,
            resumed=resumed,
            cost_usd=run.cost_usd,
            work_dir=project.root / run.work_dir,
        )


def latest_run(
    project: Project, character_name: str, run_id: int | None = None, editor: bool = False
) -> TrainingRun:
    """A run of the character by id, or its newest run of a character LoRA (`editor`: of an editor LoRA);
    a clear error when there is none."""
    with project.db.session() as session:
        character = get_character(session, character_name)
        query = select(TrainingRun).where(TrainingRun.character_id == character.id)
        if run_id is not None:
            query = query.where(TrainingRun.id == run_id)
        elif editor:
            query = query.where(TrainingRun.correction_set_id.is_not(None))
        else:
            query = query.where(TrainingRun.dataset_version_id.is_not(None))
        run = session.scalars(query.order_by(TrainingRun.id.desc()).limit(1)).first()
        if run is None:
            which = f"run {run_id}" if run_id is not None else ("editor run" if editor else "training run")
            how = (
                f"flenwheel corrections train {character_name}"
                if editor
                else f"flenwheel train {character_name}"
            )
            raise InvalidInput(f"{character_name!r} has no {which}: train one with `{how}`")
        return run


def spec_fingerprint(trainer_id: str, spec: TrainingSpec) -> str:
    text = json.dumps({"trainer": trainer_id, "spec": spec.model_dump(mode="json")}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _finished_run(
    project: Project, source: TrainingSource, trainer_id: str, spec: TrainingSpec
) -> int | None:
    with project.db.session() as session:
        run_id = session.scalar(
            select(TrainingRun.id)
            .where(
                source.runs(),
                TrainingRun.trainer == trainer_id,
                TrainingRun.fingerprint == spec_fingerprint(trainer_id, spec),
                TrainingRun.status == "succeeded",
            )
            .order_by(TrainingRun.id.desc())
            .limit(1)
        )
        return int(run_id) if run_id is not None else None


def _find_or_create_run(
    project: Project, character_name: str, source: TrainingSource, trainer_id: str, spec: TrainingSpec
) -> tuple[TrainingRun, bool]:
    fingerprint = spec_fingerprint(trainer_id, spec)
    with project.db.session() as session:
        character = get_character(session, character_name)
        unfinished = session.scalars(
            select(TrainingRun)
            .where(
                TrainingRun.character_id == character.id,
                source.runs(),
                TrainingRun.trainer == trainer_id,
                TrainingRun.status.in_(UNFINISHED),
            )
            .order_by(TrainingRun.id.desc())
        ).all()
        for run in unfinished:
            if run.fingerprint == fingerprint:
                return run, True
        run = TrainingRun(
            character_id=character.id,
            dataset_version_id=source.dataset_version_id,
            correction_set_id=source.correction_set_id,
            trainer=trainer_id,
            spec=spec.model_dump(mode="json"),
            fingerprint=fingerprint,
        )
        session.add(run)
        session.flush()
        # By character id, not name; a folder left by a deleted run of a reused id is not this run's.
        run.work_dir = f"{TRAINING_DIR}/{character.id}/run{run.id}"
        shutil.rmtree(project.root / run.work_dir, ignore_errors=True)
        return run, False


def _prepare_input(
    project: Project, character_name: str, version: DatasetVersion, trainer: Trainer, work_dir: Path
) -> TrainingInput:
    """Write the dataset version's images + captions into the run folder (once), and the trainer's format."""
    images_dir = work_dir / "images"
    items: list[TrainingImage] = []
    images_dir.mkdir(parents=True, exist_ok=True)
    with project.db.session() as session:
        token = get_character(session, character_name).token
        asset_ids = [item.asset_id for item in version.items]
        rows = session.execute(select(Asset.id, Asset.format).where(Asset.id.in_(asset_ids)))
        formats = {asset_id: fmt for asset_id, fmt in rows}
    for item in version.items:
        name = f"{token}_{item.position + 1:03d}.{formats[item.asset_id]}"
        image_path = images_dir / name
        _write_once(image_path, partial(project.blobs.get, item.sha256))
        image_path.with_suffix(".txt").write_text(item.caption + "\n")
        items.append(TrainingImage(path=image_path, caption=item.caption))
    dataset_dir = images_dir
    if trainer.dataset_format != "images":
        dataset_dir = work_dir / f"dataset-{trainer.dataset_format}"
        if not dataset_dir.exists():
            export_dataset(project, character_name, trainer.dataset_format, dataset_dir, version.number)
        if trainer.dataset_format == "zip":
            dataset_dir = next(dataset_dir.glob("*.zip"))
    return TrainingInput(
        character=character_name,
        dataset_version=version.label,
        items=tuple(items),
        dataset_dir=dataset_dir,
        work_dir=work_dir,
    )


def _write_once(path: Path, data: Callable[[], bytes]) -> None:
    """Write `data()` to `path` unless it is there; through a `.part` file, so a crash leaves no torn image."""
    if not path.exists():
        temporary = path.with_suffix(path.suffix + ".part")
        temporary.write_bytes(data())
        temporary.replace(path)


def _prepare_editor_input(
    project: Project, character_name: str, corrections: CorrectionSet, trainer: Trainer, work_dir: Path
) -> TrainingInput:
    """A correction set as an editor trainer's input: the targets with their instructions as `items`, and the
    trainer's own layout with the sources as control images (ai-toolkit folders, fal's start/end zip)."""
    from flenwheel.datasets.corrections import export_triplets

    layouts = {"ai-toolkit": "ai-toolkit", "zip": "fal"}
    if trainer.dataset_format not in layouts:
        raise InvalidInput(
            f"trainer {trainer.id!r} takes {trainer.dataset_format} datasets, which hold no control images: "
            "train an editor with --trainer ai-toolkit or --trainer fal"
        )
    images_dir = work_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    items: list[TrainingImage] = []
    for position, item in enumerate(corrections.items):
        image_path = images_dir / f"{position + 1:04d}.{item['target']['format']}"
        _write_once(image_path, partial(project.blobs.get, item["target"]["sha256"]))
        image_path.with_suffix(".txt").write_text(item["instruction"] + "\n")
        items.append(TrainingImage(path=image_path, caption=item["instruction"]))
    dataset_dir = work_dir / f"dataset-{trainer.dataset_format}"
    if not dataset_dir.exists():
        export_triplets(
            project, character_name, layouts[trainer.dataset_format], dataset_dir, corrections.number
        )
    if trainer.dataset_format == "zip":
        dataset_dir = next(dataset_dir.glob("*.zip"))
    return TrainingInput(
        character=character_name,
        dataset_version=corrections.label,
        items=tuple(items),
        dataset_dir=dataset_dir,
        work_dir=work_dir,
    )


def _set_status(project: Project, run_id: int, status: str, error: str | None = None) -> None:
    with project.db.session() as session:
        run = session.get_one(TrainingRun, run_id)
        run.status = status
        if error is not None:
            run.error = error[:4000]
        if status in ("failed", "cancelled"):
            run.finished_at = datetime.now(UTC)


def _finish(session: Session, run_id: int, result: TrainingResult) -> None:
    run = session.get_one(TrainingRun, run_id)
    run.status = "succeeded"
    run.error = None
    run.finished_at = datetime.now(UTC)
    if result.total_steps:
        run.step = max(run.step, result.total_steps)
        run.total_steps = max(run.total_steps, result.total_steps)
    if result.losses and not run.losses:
        run.losses = [[step, loss] for step, loss in result.losses]
    run.cost_usd = result.cost_usd


class RunRecorder:
    """Writes a training run's progress, losses and checkpoints to the store as the trainer reports them
    (through the run context), so a crash loses nothing; progress also reaches the job row."""

    FLUSH_SECONDS = 1.0

    def __init__(
        self, project: Project, run_id: int, ctx: RunContext, on_progress: ProgressCallback | None
    ) -> None:
        self.project = project
        self.run_id = run_id
        self.ctx = ctx
        self.on_progress = on_progress
        self._pending_losses: list[list[float]] = []
        self._step = 0
        self._total = 0
        self._last_flush = 0.0

    def step(self, step: int, total: int, loss: float | None = None) -> None:
        import time

        self._step, self._total = step, total
        if loss is not None:
            self._pending_losses.append([step, float(loss)])
        if self.on_progress is not None:
            self.on_progress(step, total, loss)
        now = time.monotonic()
        if now - self._last_flush >= self.FLUSH_SECONDS or step >= total:
            self.flush()
            self._last_flush = now

    def flush(self) -> None:
        with self.project.db.session() as session:
            run = session.get_one(TrainingRun, self.run_id)
            run.step, run.total_steps = self._step, self._total
            if self._pending_losses:
                # Keep the log strictly increasing in step: a resumed run re-reports nothing it already wrote.
                last = run.losses[-1][0] if run.losses else -1
                run.losses = list(run.losses) + [entry for entry in self._pending_losses if entry[0] > last]
                self._pending_losses = []

    def checkpoint_saved(self, checkpoint: CheckpointFile) -> None:
        self.flush()
        path = Path(checkpoint.path)
        relative = path.resolve().relative_to(self.project.root.resolve()).as_posix()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        with self.project.db.session() as session:
            existing = session.scalar(
                select(Checkpoint).where(Checkpoint.run_id == self.run_id, Checkpoint.step == checkpoint.step)
            )
            if existing is None:
                session.add(
                    Checkpoint(
                        run_id=self.run_id,
                        step=checkpoint.step,
                        epoch=checkpoint.epoch,
                        path=relative,
                        sha256=digest,
                    )
                )
            else:
                existing.path, existing.sha256, existing.epoch = relative, digest, checkpoint.epoch
