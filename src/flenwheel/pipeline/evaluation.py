"""Evaluate a training run: every checkpoint × strength × model-card prompt, scored; pick the best; decide
whether the pick becomes the active LoRA or is only recommended (evaluation/activation.py); report.

`evaluate_run` is the plain function the CLI and the job workers call. Each scored image is one row of
`evaluation_sample` (unique per evaluation, checkpoint, strength and prompt), written as soon as it is scored,
so running the same evaluation again after an interruption draws only what is missing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from flenwheel.domain import AssetKind, Frozen
from flenwheel.errors import InvalidInput
from flenwheel.evaluation.activation import ActivationDecision, decide_activation
from flenwheel.evaluation.advice import Advice, troubleshoot
from flenwheel.evaluation.grid import (
    DEFAULT_STRENGTHS,
    CheckpointRef,
    GridCell,
    GridSettings,
    cell_request,
    check_strengths,
    plan_grid,
    strength_text,
)
from flenwheel.evaluation.prompts import BODY_POSE_TARGETS, PromptSetName, pose_target, select_prompts
from flenwheel.evaluation.scoring import (
    ADHERENCE_NOT_MEASURED,
    ReferenceSet,
    body_poses,
    load_reference_set,
    pose_status,
    score_image,
    store_analysis,
)
from flenwheel.evaluation.selection import (
    CellSummary,
    PoseSuccess,
    SampleRecord,
    Selection,
    pose_success,
    select_best,
    summarise_cells,
)
from flenwheel.faces.base import FaceAnalyzer
from flenwheel.images import open_stored
from flenwheel.jobs.base import JobCancelled, JobContext
from flenwheel.pipeline.activation import (
    DECISION_KEY,
    ActivationRecord,
    apply_activation,
    current_mode,
    decision_record,
)
from flenwheel.pipeline.generation import run_generation
from flenwheel.pipeline.training import latest_run
from flenwheel.poses.mediapipe_backend import shared_pose_analyzer
from flenwheel.providers.base import ImageProvider
from flenwheel.providers.tiny_model import TINY_MODEL_ID, TINY_NOTE
from flenwheel.store.models import (
    Asset,
    Character,
    DatasetVersion,
    Evaluation,
    EvaluationSample,
    TrainingRun,
)
from flenwheel.store.project import Project, get_character

REPORTS_DIR = "reports"


class EvaluationOutcome(Frozen):
    """What `flenwheel evaluate` prints: the grid's numbers, the pick and why, advice, the report."""

    evaluation_id: int
    run_id: int
    character: str
    checkpoints: int
    strengths: tuple[float, ...]
    prompts: int
    images: int
    generated_now: int
    cells: tuple[CellSummary, ...]
    poses: tuple[PoseSuccess, ...] = ()  # pose success per body prompt (T-pose, standing, sitting)
    selection: Selection
    decision: ActivationDecision  # activated, or only recommended, and why
    advice: tuple[Advice, ...]
    references: str
    threshold: float
    adherence: str = ADHERENCE_NOT_MEASURED
    note: str | None = None  # e.g. that the tiny model draws no faces
    report: Path | None = None


def evaluate_run(
    project: Project,
    character_name: str,
    run_id: int | None = None,
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    prompts: PromptSetName | Sequence[str] = "all",
    size: int | None = None,
    steps: int | None = None,
    model: str | None = None,
    provider: str | None = None,
    providers: list[ImageProvider] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    ctx: JobContext | None = None,
    write_report: bool = True,
) -> EvaluationOutcome:
    """Evaluate a run (default: the newest), pick the best checkpoint, write the report.

    The pick becomes the active LoRA only as evaluation/activation.py's rule allows (seed 001's 80 % target):
    a pick nothing measured — always so on the tiny model — is recommended, never activated.

    `size`/`steps` default to 64 px / 4 steps on the built-in tiny model and 512 px / 20 steps otherwise.
    `provider` picks an engine by id; `providers` replaces the configured engines (tests, embedding apps).
    """
    run = latest_run(project, character_name, run_id)
    if run.dataset_version_id is None:
        raise InvalidInput(
            f"run {run.id} trained an editor LoRA (from a correction set), not a character LoRA: the model-card "
            "evaluation measures character LoRAs; give a character run's id"
        )
    dataset_version_id = run.dataset_version_id
    with project.db.session() as session:
        character = get_character(session, character_name)
        character_id, character_nsfw = character.id, character.nsfw
        trigger = f"{character.token} {character.class_word}"
        checkpoints = _checkpoint_refs(project, session.get_one(TrainingRun, run.id))
    chosen_prompts = select_prompts(trigger, prompts)
    chosen_strengths = check_strengths(strengths)
    grid = plan_grid(checkpoints, chosen_strengths, chosen_prompts)
    settings = _grid_settings(run.spec, size, steps, model)
    config = {
        "strengths": list(chosen_strengths),
        "prompts": [prompt.key for prompt in chosen_prompts],
        "seeds": {prompt.key: prompt.seed for prompt in chosen_prompts},
        **settings.model_dump(),
        "provider": provider,
        "identity_threshold": project.settings.identity_threshold,
    }
    evaluation_id = _find_or_create_evaluation(project, run.id, config)

    from flenwheel.faces.dlib_backend import DlibFaceAnalyzer

    analyzer = DlibFaceAnalyzer(detect_max_side=project.settings.detect_max_side)
    references = load_reference_set(project, character_id, dataset_version_id, analyzer)
    done = _done_cells(project, evaluation_id)
    todo = [cell for cell in grid if cell.key not in done]
    generated = 0
    try:
        for cell in todo:
            if ctx is not None and ctx.cancelled():
                raise JobCancelled("evaluation cancelled; run it again to continue where it stopped")
            _draw_and_score(
                project,
                character_name,
                evaluation_id,
                cell,
                settings,
                references,
                analyzer,
                provider,
                providers,
                ctx.counting_images() if ctx is not None else None,
            )
            generated += 1
            finished = len(grid) - len(todo) + generated
            if on_progress is not None:
                on_progress(finished, len(grid))
            if ctx is not None:
                ctx.progress(
                    finished, len(grid), f"{cell.checkpoint.label}, strength {strength_text(cell.strength)}"
                )
    except BaseException:
        _set_status(project, evaluation_id, "interrupted")
        raise
    outcome = _conclude(
        project,
        character_name,
        character_id,
        character_nsfw,
        run,
        evaluation_id,
        checkpoints,
        grid,
        references,
    )
    outcome = outcome.model_copy(update={"generated_now": generated})
    if write_report:
        from flenwheel.report.training import write_evaluation_report

        target = project.root / REPORTS_DIR / f"{_file_safe(character_name)}-run{run.id}-evaluation.html"
        write_evaluation_report(project, evaluation_id, target)
        with project.db.session() as session:
            session.get_one(Evaluation, evaluation_id).report_path = target.relative_to(
                project.root
            ).as_posix()
        outcome = outcome.model_copy(update={"report": target})
    return outcome


def _checkpoint_refs(project: Project, run: TrainingRun) -> list[CheckpointRef]:
    refs = []
    for checkpoint in run.checkpoints:
        path = project.root / checkpoint.path
        if not path.is_file():
            raise InvalidInput(
                f"checkpoint file {path} of run {run.id} is missing: restore it, or train again with "
                "`flenwheel train`"
            )
        refs.append(CheckpointRef(id=checkpoint.id, step=checkpoint.step, epoch=checkpoint.epoch, path=path))
    if not refs:
        raise InvalidInput(
            f"run {run.id} has no checkpoints yet ({run.status}): wait for its first checkpoint"
        )
    return refs


def _grid_settings(
    spec: dict[str, Any], size: int | None, steps: int | None, model: str | None
) -> GridSettings:
    """Draw with the base model the LoRA was trained on when this machine has it (tiny or a local path)."""
    base = str(spec.get("base_model") or TINY_MODEL_ID)
    if model is None and (base == TINY_MODEL_ID or Path(base).expanduser().exists()):
        model = base
    tiny = model == TINY_MODEL_ID
    try:
        return GridSettings(
            size=size or (64 if tiny else 512), steps=steps or (4 if tiny else 20), model=model
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])} {error['input']!r}: {error['msg']}"
            for error in exc.errors()
        )
        raise InvalidInput(f"evaluation settings are not valid — {problems}") from None


def _find_or_create_evaluation(project: Project, run_id: int, config: dict[str, Any]) -> int:
    """The newest evaluation of this run that drew the same images (to resume or refresh), else a new one.

    The identity threshold only changes how stored distances are judged, so a new threshold re-judges the
    stored images instead of drawing them again."""

    def drawing(settings: dict[str, Any]) -> dict[str, Any]:
        return {
            key: value for key, value in settings.items() if key not in ("identity_threshold", "decision")
        }

    with project.db.session() as session:
        for evaluation in session.scalars(
            select(Evaluation).where(Evaluation.run_id == run_id).order_by(Evaluation.id.desc())
        ):
            if drawing(evaluation.config) == drawing(config):
                evaluation.status, evaluation.config = "running", config
                return evaluation.id
        evaluation = Evaluation(run_id=run_id, config=config, status="running")
        session.add(evaluation)
        session.flush()
        return evaluation.id


def _done_cells(project: Project, evaluation_id: int) -> set[tuple[int, float, str]]:
    with project.db.session() as session:
        rows = session.execute(
            select(
                EvaluationSample.checkpoint_id, EvaluationSample.strength, EvaluationSample.prompt_key
            ).where(EvaluationSample.evaluation_id == evaluation_id)
        ).all()
    return {(checkpoint_id, round(strength, 4), key) for checkpoint_id, strength, key in rows}


def _draw_and_score(
    project: Project,
    character_name: str,
    evaluation_id: int,
    cell: GridCell,
    settings: GridSettings,
    references: ReferenceSet,
    analyzer: FaceAnalyzer,
    provider: str | None,
    providers: list[ImageProvider] | None,
    ctx: JobContext | None,
) -> None:
    request = cell_request(cell, settings)
    outcome = run_generation(
        project,
        character_name,
        request,
        kind=AssetKind.EVALUATION,
        preferred=provider,
        providers=providers,
        ctx=ctx,  # the job's run: its cancel reaches the engine, its budget pays a paid engine
    )
    output = outcome.outputs[0]
    image = open_stored(output.file.read_bytes())
    pose_analyzer = shared_pose_analyzer() if pose_target(cell.prompt.key) is not None else None
    score, analysis = score_image(image, analyzer, references, output.nsfw_score, pose_analyzer)
    store_analysis(project, output.asset_id, analysis)
    try:
        with project.db.session() as session:
            asset = session.get_one(Asset, output.asset_id)
            if "evaluation" not in asset.attributes:  # the same pixels for two cells share one asset
                asset.attributes = {
                    "evaluation": evaluation_id,
                    "checkpoint": cell.checkpoint.id,
                    "strength": cell.strength,
                    "prompt_key": cell.prompt.key,
                }
            session.add(
                EvaluationSample(
                    evaluation_id=evaluation_id,
                    checkpoint_id=cell.checkpoint.id,
                    strength=cell.strength,
                    prompt_key=cell.prompt.key,
                    prompt=cell.prompt.text,
                    seed=cell.prompt.seed,
                    asset_id=output.asset_id,
                    face_found=score.face_found,
                    identity_distance=score.identity_distance,
                    near_copy=score.near_copy,
                    nsfw_score=score.nsfw_score,
                    adherence=score.adherence,
                )
            )
    except IntegrityError:
        pass  # a concurrent run of the same evaluation scored this cell first: the same seed, the same image


def load_samples(project: Project, evaluation_id: int) -> list[SampleRecord]:
    """The scored images of an evaluation, in the order they were drawn."""
    with project.db.session() as session:
        rows = session.scalars(
            select(EvaluationSample)
            .where(EvaluationSample.evaluation_id == evaluation_id)
            .order_by(EvaluationSample.id)
        ).all()
        bodies = body_poses(
            project, session, [r.asset_id for r in rows if r.asset_id and pose_target(r.prompt_key)]
        )
        return [
            SampleRecord(
                checkpoint_id=row.checkpoint_id,
                strength=round(row.strength, 4),
                prompt_key=row.prompt_key,
                asset_id=row.asset_id,
                face_found=row.face_found,
                identity_distance=row.identity_distance,
                near_copy=row.near_copy,
                nsfw_score=row.nsfw_score,
                adherence=row.adherence,
                pose=pose_status(row.prompt_key, bodies.get(row.asset_id) if row.asset_id else None),
            )
            for row in rows
        ]


def _conclude(
    project: Project,
    character_name: str,
    character_id: int,
    character_nsfw: bool,
    run: TrainingRun,
    evaluation_id: int,
    checkpoints: list[CheckpointRef],
    grid: Sequence[GridCell],
    references: ReferenceSet,
) -> EvaluationOutcome:
    """Summarise, select, advise, decide; record it all — and activate the pick only if the decision says so."""
    wanted = {cell.key for cell in grid}
    samples = [
        s
        for s in load_samples(project, evaluation_id)
        if (s.checkpoint_id, s.strength, s.prompt_key) in wanted
    ]
    strengths = sorted({cell.strength for cell in grid})
    threshold = references.threshold
    cells = summarise_cells(samples, checkpoints, strengths, threshold, allow_nsfw=character_nsfw)
    selection = select_best(cells, threshold)
    with project.db.session() as session:
        version = session.get_one(DatasetVersion, run.dataset_version_id)
        gaps = [
            f"{t['target']} (has {t['actual']})"
            for t in version.composition.get("targets", [])
            if not t["met"]
        ]
        asset_ids = [s.asset_id for s in samples if s.asset_id is not None]
        tiny = session.scalar(
            select(Asset.id).where(Asset.id.in_(asset_ids), Asset.model == TINY_MODEL_ID).limit(1)
        )
    learning_rate = run.spec.get("learning_rate")
    advice = troubleshoot(
        cells,
        samples,
        selection,
        threshold,
        learning_rate=float(learning_rate) if learning_rate is not None else None,
        dataset_gaps=gaps,
        character_nsfw=character_nsfw,
    )
    with project.db.session() as session:  # the decision and the activation in one transaction
        character = session.get_one(Character, character_id)
        current = current_mode(session, character, evaluation_id, cells, selection.measured)
        decision = decide_activation(selection, current)
        evaluation = session.get_one(Evaluation, evaluation_id)
        evaluation.summary = [cell.model_dump(mode="json") for cell in cells]
        evaluation.selected_checkpoint_id = selection.checkpoint_id
        evaluation.selected_strength = selection.strength
        evaluation.reason = selection.reason
        evaluation.advice = [item.model_dump(mode="json") for item in advice]
        evaluation.config = {
            **evaluation.config,
            DECISION_KEY: decision_record(decision, evaluation_id, run.id),
        }
        evaluation.status = "succeeded"
        evaluation.finished_at = datetime.now(UTC)
        if decision.activated:
            record = ActivationRecord(
                action="activated",
                checkpoint_id=selection.checkpoint_id,
                strength=selection.strength,
                by="evaluation",
                evaluation_id=evaluation_id,
                success_rate=selection.success_rate,
                at=datetime.now(UTC).isoformat(),
            )
            apply_activation(session, character, selection.checkpoint_id, selection.strength, record)
    return EvaluationOutcome(
        evaluation_id=evaluation_id,
        run_id=run.id,
        character=character_name,
        checkpoints=len(checkpoints),
        strengths=tuple(strengths),
        prompts=len({cell.prompt.key for cell in grid}),
        images=len(samples),
        generated_now=0,
        cells=tuple(cells),
        poses=tuple(
            pose_success(
                samples,
                {f"full_body-{key}": target.description for key, target in BODY_POSE_TARGETS.items()},
            )
        ),
        selection=selection,
        decision=decision,
        advice=tuple(advice),
        references=references.description,
        threshold=threshold,
        note=TINY_NOTE if tiny is not None else None,
    )


def _set_status(project: Project, evaluation_id: int, status: str) -> None:
    with project.db.session() as session:
        session.get_one(Evaluation, evaluation_id).status = status


def _file_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "character"
