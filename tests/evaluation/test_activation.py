"""Which evaluation picks become the studio's LoRA (seed 001: ≥ 80 % success, or better than the current mode)
and which are only recommended — measured on real photos with the real dlib model — and the user's own
`activate` / `deactivate`, with the studio saying which mode it is in and why."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from flenwheel.errors import InvalidInput
from flenwheel.evaluation.activation import CurrentMode, decide_activation
from flenwheel.evaluation.selection import Selection
from flenwheel.pipeline.activation import activate, deactivate
from flenwheel.pipeline.evaluation import evaluate_run
from flenwheel.pipeline.studio import decide_mode
from flenwheel.store.models import Character, Evaluation
from flenwheel.store.project import Project

from checkpoint_runs import UNSEEN_PHOTOS, add_run, character_with_dataset
from photo_engine import CheckpointPhotoEngine
from photos import london

PROMPTS = (
    "front-neutral",
    "half_left-smiling",
    "profile_left-neutral",
    "half_right-sad",
    "full_body-standing",
)
# How many of the five prompts each "checkpoint" draws as lisa; the rest are strangers.
LIKENESS = {"poor": 1, "weak": 2, "fair": 3}


def scripted(stem: str, strength: float, key: str) -> Path:
    index = PROMPTS.index(key)
    return UNSEEN_PHOTOS[index] if index < LIKENESS[stem] else london(1 + index % 3)


def run_with(project: Project, stem: str) -> tuple[int, int]:
    run_id, (checkpoint,) = add_run(
        project, "lisa", [(stem, stem.encode())], spec={"base_model": "sd15-photos"}
    )
    return run_id, checkpoint


def evaluate(project: Project, run_id: int):
    return evaluate_run(
        project,
        "lisa",
        run_id,
        strengths=(1.0,),
        prompts=PROMPTS,
        providers=[CheckpointPhotoEngine(scripted)],
    )


def active(project: Project) -> tuple[int | None, float | None]:
    with project.db.session() as session:
        character = session.scalars(select(Character)).one()
        return character.active_checkpoint_id, character.active_lora_strength


def test_a_measured_pick_below_80_percent_with_nothing_to_compare_is_only_recommended(
    project: Project,
) -> None:
    character_with_dataset(project)
    run_id, fair = run_with(project, "fair")

    outcome = evaluate(project, run_id)

    assert outcome.selection.measured and outcome.selection.success_rate == pytest.approx(0.6)
    assert (outcome.decision.activated, outcome.decision.rule) == (False, "current_not_measured")
    assert "60% success is below the 80% target" in outcome.decision.reason
    assert (
        "identity-reference mode (no LoRA is active) has no measured success rate" in outcome.decision.reason
    )
    assert active(project) == (None, None)
    mode = decide_mode(project, "lisa")
    assert mode.mode == "identity_reference"
    assert (
        f"run {run_id}'s pick, checkpoint {fair} at strength 1.0 at 60% success, was recommended"
        in mode.reason
    )
    assert f"flenwheel activate lisa {fair} --strength 1.0" in mode.reason
    with project.db.session() as session:
        stored = session.get_one(Evaluation, outcome.evaluation_id).config["decision"]
    assert stored["activated"] is False and stored["summary"].startswith("recommended, not activated")
    page = outcome.report.read_text()
    assert "Recommended, not activated (below 80% and the current mode was never measured)." in page


def test_a_pick_below_80_percent_activates_only_when_it_beats_the_active_lora(project: Project) -> None:
    character_with_dataset(project)
    weak_run, weak = run_with(project, "weak")
    first = evaluate(project, weak_run)
    assert first.selection.success_rate == pytest.approx(0.4) and not first.decision.activated

    # The user decides to use it anyway.
    chosen = activate(project, "lisa", "recommended")
    assert (chosen.active.id, chosen.strength) == (weak, 1.0) and "recommended" in chosen.strength_source
    assert decide_mode(project, "lisa").reason == (
        f"lora: checkpoint {weak} (run {weak_run}, step 100, epoch 1) at strength 1.0, activated by the user"
    )

    # A better run (60 %) beats the active LoRA's measured 40 % on the same prompts: it is activated.
    fair_run, fair = run_with(project, "fair")
    second = evaluate(project, fair_run)
    assert (second.decision.activated, second.decision.rule) == (True, "beats_current")
    assert second.decision.current.success_rate == pytest.approx(0.4)
    assert f"evaluation {first.evaluation_id}" in second.decision.reason
    assert active(project) == (fair, 1.0)
    mode = decide_mode(project, "lisa")
    assert mode.mode == "lora" and mode.reason.endswith(
        f"activated by evaluation {second.evaluation_id} (success 60%)"
    )

    # A worse run (20 %) does not replace it.
    poor_run, _poor = run_with(project, "poor")
    third = evaluate(project, poor_run)
    assert (third.decision.activated, third.decision.rule) == (False, "does_not_beat_current")
    assert "does not beat the active LoRA" in third.decision.reason and "(60%" in third.decision.reason
    assert active(project) == (fair, 1.0)

    # The user turns it off: identity-reference mode, and the studio says who did it.
    off = deactivate(project, "lisa")
    assert off.previous is not None and off.previous.id == fair and active(project) == (None, None)
    assert decide_mode(project, "lisa").reason.startswith(
        f"identity_reference: no LoRA is active (the user deactivated checkpoint {fair} at strength 1.0"
    )


def test_activate_names_checkpoints_in_several_ways_and_lists_them_when_wrong(project: Project) -> None:
    character_with_dataset(project)
    run_id, (epoch1, epoch2) = add_run(project, "lisa", [("epoch1", b"one"), ("epoch2", b"two")])

    assert activate(project, "lisa", "latest").active.id == epoch2
    assert activate(project, "lisa", f"run{run_id}:step100", 0.7).active.id == epoch1
    assert active(project) == (epoch1, 0.7)
    assert activate(project, "lisa", str(epoch2)).strength == 1.0  # nothing recommended it: the default

    with pytest.raises(InvalidInput) as wrong:
        activate(project, "lisa", "run9:step1")
    assert "'run9:step1' names no checkpoint of 'lisa'" in str(wrong.value)
    assert f"{epoch1} (run{run_id}:step100), {epoch2} (run{run_id}:step200)" in str(wrong.value)
    with pytest.raises(InvalidInput, match="no evaluation of 'lisa' has recommended"):
        activate(project, "lisa", "recommended")
    with pytest.raises(InvalidInput, match="out of range"):
        activate(project, "lisa", "latest", 5.0)
    (project.root / f"training/lisa/run{run_id}/checkpoints/epoch1.safetensors").unlink()
    with pytest.raises(InvalidInput, match=r"epoch1\.safetensors, is missing"):
        activate(project, "lisa", str(epoch1))
    assert active(project) == (epoch2, 1.0)  # a refused activation changes nothing


def selection(success: float, measured: bool = True, checkpoint: int = 7) -> Selection:
    return Selection(
        checkpoint_id=checkpoint,
        step=100,
        epoch=1,
        strength=0.8,
        success_rate=success,
        mean_similarity=0.6 if measured else None,
        joint_score=success,
        meets_target=success >= 0.8,
        measured=measured,
        reason="",
    )


@pytest.mark.parametrize(
    ("pick", "current", "activated", "rule"),
    [
        (selection(0.0, measured=False), CurrentMode(mode="identity_reference"), False, "not_measured"),
        (selection(0.85), CurrentMode(mode="identity_reference"), True, "meets_target"),
        (
            selection(0.85),
            CurrentMode(mode="lora", checkpoint_id=3, strength=1.0, success_rate=0.95),
            False,
            "current_measured_higher",
        ),
        (selection(0.6), CurrentMode(mode="identity_reference"), False, "current_not_measured"),
        (
            selection(0.6),
            CurrentMode(mode="lora", checkpoint_id=3, strength=1.0, success_rate=0.6),
            False,
            "does_not_beat_current",
        ),
        (
            selection(0.6),
            CurrentMode(mode="lora", checkpoint_id=3, strength=1.0, success_rate=0.5),
            True,
            "beats_current",
        ),
        (selection(0.9), CurrentMode(mode="lora", checkpoint_id=7, strength=0.8), False, "already_active"),
    ],
)
def test_the_activation_rule(pick: Selection, current: CurrentMode, activated: bool, rule: str) -> None:
    decision = decide_activation(pick, current)
    assert (decision.activated, decision.rule) == (activated, rule)
    assert decision.summary.startswith(
        "activated" if activated else ("kept" if rule == "already_active" else "recommended, not activated")
    )
