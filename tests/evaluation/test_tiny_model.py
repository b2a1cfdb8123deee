"""End to end on the built-in tiny model: real LoRA files, real generation, real face analysis — which finds
no faces, and the evaluation says so instead of inventing identity numbers; its pick is recommended, never
activated, and the studio stays in identity-reference mode saying why."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from flenwheel.evaluation.scoring import ADHERENCE_NOT_MEASURED
from flenwheel.pipeline.evaluation import evaluate_run
from flenwheel.pipeline.studio import decide_mode
from flenwheel.providers.diffusers_local import LocalDiffusersProvider
from flenwheel.providers.tiny_model import TINY_NOTE
from flenwheel.store.models import Character, EvaluationSample
from flenwheel.store.project import Project

from checkpoint_runs import add_run, character_with_dataset, tiny_lora_file


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("loras")
    return [tiny_lora_file(folder / f"e{seed}.safetensors", seed) for seed in (1, 2)]


def test_tiny_model_evaluation_finds_no_faces_says_so_and_does_not_activate_its_pick(
    project: Project, lora_files: list[Path]
) -> None:
    character_with_dataset(project)
    losses = [(step, 0.2 + 0.1 / step) for step in range(1, 201)]
    run_id, (epoch1, _epoch2) = add_run(
        project, "lisa", [("epoch1", lora_files[0]), ("epoch2", lora_files[1])], losses
    )

    outcome = evaluate_run(
        project,
        "lisa",
        strengths=(0.6, 1.0),
        prompts=["front-neutral", "profile_right-sad", "full_body-sitting"],
        size=64,
        steps=2,
        providers=[LocalDiffusersProvider()],
    )

    assert outcome.images == outcome.generated_now == 12 and outcome.note == TINY_NOTE
    with project.db.session() as session:
        rows = session.scalars(select(EvaluationSample)).all()
        assert not any(row.face_found for row in rows)
        assert all(row.identity_distance is None and row.adherence is None for row in rows)
        # The LoRA is applied: each checkpoint and strength draws different pixels from the same seed.
        assert len({row.asset_id for row in rows}) == 12
        character = session.scalar(select(Character))
        # Nothing was measured: the tie rule's pick is recommended, not made the studio's LoRA.
        assert (character.active_checkpoint_id, character.active_lora_strength) == (None, None)
    assert all(c.faces == 0 and c.mean_similarity is None and c.success_rate == 0 for c in outcome.cells)
    assert not outcome.selection.measured
    assert (
        "could not be measured" in outcome.selection.reason and "not by evidence" in outcome.selection.reason
    )
    assert [item.code for item in outcome.advice] == ["no_faces"]
    decision = outcome.decision
    assert (decision.activated, decision.rule, decision.checkpoint_id, decision.strength) == (
        False,
        "not_measured",
        epoch1,
        0.6,
    )
    assert decision.summary == "recommended, not activated (not measurable)"
    mode = decide_mode(project, "lisa")
    assert mode.mode == "identity_reference" and mode.checkpoint_id is None
    assert mode.reason == (
        f"identity_reference: no LoRA is active (run {run_id}'s pick was not measurable: recommended "
        f"checkpoint {epoch1} at strength 0.6, not activated; use it with `flenwheel activate lisa {epoch1} "
        "--strength 0.6`)"
    )
    assert outcome.adherence == ADHERENCE_NOT_MEASURED

    page = outcome.report.read_text()
    assert "No face was found in any of the 12 images" in page and "draws no faces" in page
    assert page.count("data:image/png;base64,") == 2 and page.count("data:image/jpeg;base64,") == 12
    assert "the model draws no faces" in page and "n/a" in page
    assert "Recommended, not activated (not measurable)." in page
    assert f"flenwheel activate lisa {epoch1} --strength 0.6" in page
