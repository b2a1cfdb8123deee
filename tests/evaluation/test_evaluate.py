"""Evaluation on real faces: a checkpoint that learned the character beats one that did not, near copies are
penalised, an interrupted evaluation resumes without drawing twice, and the report shows the evidence. A pick
that meets seed 001's 80 % target is activated (tests/evaluation/test_activation.py has the other cases)."""

from __future__ import annotations

import html
from pathlib import Path

import pytest
from sqlalchemy import func, select

from flenwheel.config import Settings
from flenwheel.domain import AssetKind
from flenwheel.pipeline.evaluation import evaluate_run
from flenwheel.pipeline.studio import decide_mode
from flenwheel.providers.base import ProviderError
from flenwheel.store.models import Asset, Character, Evaluation, EvaluationSample
from flenwheel.store.project import Project

from checkpoint_runs import TRAINING_PHOTOS, UNSEEN_PHOTOS, add_run, character_with_dataset
from photo_engine import CheckpointPhotoEngine
from photos import FACES, POSES, london

# Portrait prompts only: the engine answers with portraits, which a body prompt's pose check would fail
# (test_body_prompts_count_only_in_the_pose_asked_for covers body prompts).
PROMPTS = ("front-neutral", "half_left-smiling", "front-smiling")
STRENGTHS = (0.6, 1.0)
BRICK = FACES / "non_face" / "4_brick.jpg"
LOSSES = [(step, 0.3 - step / 1000) for step in range(1, 201)]


# A base model this machine does not have: the engine under test decides what is drawn.
SPEC = {"base_model": "sd15-photos", "learning_rate": 1e-4, "trigger": "ohwx woman"}


def two_checkpoints(project: Project, losses=LOSSES) -> tuple[int, list[int]]:
    return add_run(project, "lisa", [("epoch1", b"one"), ("epoch2", b"two")], losses, spec=SPEC)


def learned_then_lost(stem: str, strength: float, key: str) -> Path:
    """epoch1 learned lisa (at 0.6 its third shot is someone else); epoch2 draws strangers and a wall."""
    index = PROMPTS.index(key)
    if stem == "epoch1":
        if strength < 0.7 and key == PROMPTS[2]:
            return london(3)
        return UNSEEN_PHOTOS[index]
    return london(1 + index) if index < 2 else BRICK


def evaluate(project: Project, engine: CheckpointPhotoEngine, **options):
    return evaluate_run(project, "lisa", strengths=STRENGTHS, prompts=PROMPTS, providers=[engine], **options)


def by_cell(outcome) -> dict[tuple[int, float], object]:
    return {(cell.step, cell.strength): cell for cell in outcome.cells}


def test_the_checkpoint_that_learned_the_character_is_selected_and_made_active(project: Project) -> None:
    character_with_dataset(project)
    run_id, (epoch1, _epoch2) = two_checkpoints(project)
    engine = CheckpointPhotoEngine(learned_then_lost)

    outcome = evaluate(project, engine)

    cells = by_cell(outcome)
    print(
        {
            key: (c.success_rate, c.faces, c.mean_similarity, c.spread, c.mean_distance)
            for key, c in cells.items()
        }
    )
    assert len(engine.calls) == 12 and outcome.images == 12 and outcome.generated_now == 12
    assert [cells[100, 0.6].success_rate, cells[100, 1.0].success_rate] == [
        pytest.approx(2 / 3, abs=1e-3),
        1.0,
    ]
    assert cells[200, 0.6].success_rate == cells[200, 1.0].success_rate == 0.0
    assert (cells[100, 1.0].faces, cells[200, 1.0].faces) == (3, 2)  # the brick wall has no face
    # Real dlib distances: the same woman sits well inside the 0.48 threshold, strangers outside it.
    assert cells[100, 1.0].mean_distance < 0.48 < cells[200, 1.0].mean_distance
    assert cells[100, 1.0].mean_similarity > 0.52 > cells[200, 1.0].mean_similarity

    selection = outcome.selection
    assert (selection.checkpoint_id, selection.strength, selection.measured) == (epoch1, 1.0, True)
    assert (
        "step 100 (epoch 1) at strength 1.0" in selection.reason
        and "3 of 3 images (100%)" in selection.reason
    )
    codes = [item.code for item in outcome.advice]
    assert "overfit" in codes and "ready" in codes
    overfit = next(item for item in outcome.advice if item.code == "overfit")
    assert "step 100" in overfit.symptom and "1e-04 → 5e-05" in overfit.remedy

    # 100 % success meets seed 001's 80 % target: the pick becomes the studio's LoRA, and the studio says why.
    assert (outcome.decision.activated, outcome.decision.rule) == (True, "meets_target")
    mode = decide_mode(project, "lisa")
    assert mode.mode == "lora" and mode.reason.endswith(
        f"activated by evaluation {outcome.evaluation_id} (success 100%)"
    )
    with project.db.session() as session:
        character = session.scalar(select(Character))
        assert (character.active_checkpoint_id, character.active_lora_strength) == (epoch1, 1.0)
        evaluation = session.get_one(Evaluation, outcome.evaluation_id)
        assert evaluation.status == "succeeded" and evaluation.reason == selection.reason
        assert (
            len(evaluation.summary) == 4
            and evaluation.report_path == f"reports/lisa-run{run_id}-evaluation.html"
        )
        images = session.scalars(select(Asset).where(Asset.kind == AssetKind.EVALUATION)).all()
        assert len(images) == 12
        assert {a.attributes["prompt_key"] for a in images} == set(PROMPTS)
        assert {a.attributes["evaluation"] for a in images} == {outcome.evaluation_id}

    page = outcome.report.read_text()
    assert outcome.report == project.root / "reports" / f"lisa-run{run_id}-evaluation.html"
    assert page.count("data:image/png;base64,") == 2  # the heatmap and the loss curve
    assert page.count("data:image/jpeg;base64,") == 12  # the contact sheet
    assert html.escape(selection.reason) in page and "identity falls after step 100" in page
    assert "Prompt adherence: not measured" in page and "No face was found" not in page

    # A stricter identity threshold re-judges the stored images; nothing is drawn again.
    strict = Project(project.settings.model_copy(update={"identity_threshold": 0.3}))
    try:
        rejudged = evaluate(strict, engine)
    finally:
        strict.close()
    assert len(engine.calls) == 12 and rejudged.evaluation_id == outcome.evaluation_id
    assert by_cell(rejudged)[100, 1.0].success_rate == 0.0 and "distance ≤ 0.30" in rejudged.selection.reason
    assert not rejudged.decision.activated  # nothing at 0 % replaces the active LoRA
    with project.db.session() as session:
        character = session.scalar(select(Character))
        assert (character.active_checkpoint_id, character.active_lora_strength) == (epoch1, 1.0)


def memorised(stem: str, strength: float, key: str) -> Path:
    """epoch1 draws new photos of lisa; epoch2 hands back her training photos (it memorised them)."""
    index = PROMPTS.index(key)
    return (UNSEEN_PHOTOS if stem == "epoch1" else TRAINING_PHOTOS)[index]


def test_near_copies_of_training_images_are_penalised(project: Project) -> None:
    character_with_dataset(project)
    _run, (epoch1, _epoch2) = two_checkpoints(project, losses=())

    outcome = evaluate(project, CheckpointPhotoEngine(memorised))

    cells = by_cell(outcome)
    assert cells[200, 1.0].near_copies == 3 and cells[200, 1.0].success_rate == 0.0
    assert cells[200, 1.0].faces == 3  # the copies do show her face: only the copy check catches them
    assert cells[100, 1.0].near_copies == 0 and cells[100, 1.0].success_rate == 1.0
    assert outcome.selection.checkpoint_id == epoch1
    assert cells[200, 1.0].joint_score < 0 < cells[100, 1.0].joint_score
    memorised_advice = next(item for item in outcome.advice if item.code == "memorised")
    assert "6 of 12 images are near copies" in memorised_advice.evidence
    with outcome.report.open() as page:
        assert "near copy of a training image" in page.read()


def test_an_interrupted_evaluation_resumes_without_drawing_twice(
    any_project: Project, tmp_path: Path
) -> None:
    """On SQLite and PostgreSQL: the unique cell key is what makes the second run draw only what is missing."""
    project = any_project
    character_with_dataset(project)
    two_checkpoints(project)

    with pytest.raises(ProviderError, match="went away"):
        evaluate(project, CheckpointPhotoEngine(learned_then_lost, stop_after=5))
    with project.db.session() as session:
        assert session.scalar(select(func.count()).select_from(EvaluationSample)) == 5
        assert session.scalar(select(Evaluation.status)) == "interrupted"
        assert session.scalar(select(Character.active_checkpoint_id)) is None

    engine = CheckpointPhotoEngine(learned_then_lost)
    resumed = evaluate(project, engine)
    assert len(engine.calls) == 7 and resumed.generated_now == 7 and resumed.images == 12

    again = evaluate(project, engine)  # a finished evaluation run again draws nothing
    assert len(engine.calls) == 7 and again.generated_now == 0

    with project.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Evaluation)) == 1
        keys = session.execute(
            select(EvaluationSample.checkpoint_id, EvaluationSample.strength, EvaluationSample.prompt_key)
        ).all()
        assert len(keys) == len(set(keys)) == 12

    fresh = Project.init(Settings(project=tmp_path / "fresh", workers=2))
    try:
        character_with_dataset(fresh)
        two_checkpoints(fresh)
        uninterrupted = evaluate(fresh, CheckpointPhotoEngine(learned_then_lost))
    finally:
        fresh.close()
    assert resumed.cells == uninterrupted.cells and again.cells == uninterrupted.cells
    assert resumed.selection == uninterrupted.selection


BODY_PROMPTS = ("front-neutral", "full_body-standing", "full_body-t_pose", "full_body-sitting")


def posed(stem: str, strength: float, key: str) -> Path:
    """Lisa's portrait for the portrait and for "standing" (her face, but no body to measure); real people
    in a T-pose for "T-pose" and standing for "sitting"."""
    return {
        "front-neutral": UNSEEN_PHOTOS[0],
        "full_body-standing": UNSEEN_PHOTOS[1],
        "full_body-t_pose": POSES / "t_pose.jpg",
        "full_body-sitting": POSES / "standing.jpg",
    }[key]


def test_body_prompts_count_only_in_the_pose_asked_for(project: Project) -> None:
    """Pose success per body prompt on real photos; the model-card success rate counts it: lisa's face on a
    "full body standing" prompt with no body to measure is not a success, nor is the wrong pose."""
    character_with_dataset(project)
    add_run(project, "lisa", [("epoch1", b"one")], spec=SPEC)

    outcome = evaluate_run(
        project,
        "lisa",
        strengths=(1.0,),
        prompts=BODY_PROMPTS,
        providers=[CheckpointPhotoEngine(posed)],
    )

    poses = {p.prompt_key: (p.images, p.passed, p.drifted, p.not_measurable) for p in outcome.poses}
    assert poses == {
        "full_body-standing": (1, 0, 0, 1),
        "full_body-t_pose": (1, 1, 0, 0),
        "full_body-sitting": (1, 0, 1, 0),
    }
    [cell] = outcome.cells
    assert (cell.pose_checked, cell.pose_passed) == (3, 1)
    # lisa's face twice within the threshold, but only the portrait is a success
    assert cell.faces >= 2 and cell.successes == 1 and cell.success_rate == 0.25
    page = outcome.report.read_text()
    assert "Body poses" in page and "T-pose, facing front" in page and "1/3" in page
