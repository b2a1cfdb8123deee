"""The background chain on the embedded job backend: gate → dataset → train → evaluate → activate, each a
job; on the tiny model (no faces to measure) it ends "recommended, not activated" and the studio stays in
identity-reference mode, saying why; a retried stage does not fork or repeat the chain."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from flenwheel.config import Settings
from flenwheel.errors import InvalidInput
from flenwheel.jobs.embedded import EmbeddedBackend
from flenwheel.pipeline.chain import chain_status, start_chain
from flenwheel.pipeline.kinds import register_pipeline_kinds
from flenwheel.pipeline.studio import decide_mode
from flenwheel.store.models import Asset, Character, Job, TrainingRun
from flenwheel.store.project import Project

from checkpoint_runs import character_with_dataset
from patience import HANG_S

OPTIONS = {
    "skip": ["sheet"],  # lisa comes from photos: no base image to draw a sheet from
    "training": {"resolution": 64, "rank": 4, "epochs": 2, "repeats": 1, "seed": 5},
    "evaluation": {"prompts": ["front-neutral", "profile_left-smiling"], "strengths": [0.8, 1.0]},
}


def run_chain(project: Project, options: dict) -> list[dict]:
    register_pipeline_kinds()  # this pool runs the chain's stages, as `flenwheel serve` does
    backend = EmbeddedBackend(project, workers=2).start()
    try:
        root = start_chain(project, backend, "lisa", options)
        backend.wait(root, timeout=HANG_S)
        deadline = time.monotonic() + HANG_S  # only against a hang: the asserts then show the stages
        while time.monotonic() < deadline:  # each stage submits the next: wait on them in turn
            stages = chain_status(project, root)
            if any(s["status"] in ("failed", "cancelled", "interrupted") for s in stages):
                break
            if stages and stages[-1]["stage"] == "activate" and stages[-1]["status"] == "succeeded":
                break
            if stages:
                backend.wait(stages[-1]["job"], timeout=5)
        return chain_status(project, root)
    finally:
        backend.shutdown(timeout=60)


@pytest.mark.slow
def test_the_chain_trains_evaluates_and_recommends_but_does_not_activate_an_unmeasured_pick(
    any_project: Project,
) -> None:
    character_with_dataset(any_project)
    assert decide_mode(any_project, "lisa").mode != "lora"

    stages = run_chain(any_project, OPTIONS)

    assert [s["stage"] for s in stages] == ["gate", "dataset", "train", "evaluate", "activate"], stages
    assert all(s["status"] == "succeeded" for s in stages), stages
    train = stages[2]["result"]
    assert train["checkpoints"] == 2 and train["steps"] == 8
    evaluate = stages[3]["result"]
    assert evaluate["images"] == 2 * 2 * 2 and evaluate["measured"] is False  # the tiny model draws no faces
    assert evaluate["activated"] is False
    activate = stages[4]["result"]
    assert activate["decision"] == "recommended, not activated (not measurable)"
    assert activate["activated"] is False and activate["mode"] == "identity_reference"
    assert (activate["recommended_checkpoint"], activate["recommended_strength"]) == (
        evaluate["selected_checkpoint"],
        evaluate["selected_strength"],
    )
    with any_project.db.session() as session:
        character = session.scalars(select(Character)).one()
        assert character.active_checkpoint_id is None
    decision = decide_mode(any_project, "lisa")
    assert decision.mode == "identity_reference" and decision.reason == activate["reason"]
    assert (
        f"pick was not measurable: recommended checkpoint {evaluate['selected_checkpoint']} at strength "
        f"{evaluate['selected_strength']}, not activated" in decision.reason
    )


@pytest.mark.slow
def test_running_the_chain_again_reuses_every_stage(project: Project) -> None:
    character_with_dataset(project)
    run_chain(project, OPTIONS)
    with project.db.session() as session:
        runs = session.scalar(select(func.count()).select_from(TrainingRun))
        images = session.scalar(select(func.count()).select_from(Asset).where(Asset.kind == "evaluation"))

    again = run_chain(project, OPTIONS)

    assert all(s["status"] == "succeeded" for s in again)
    assert again[2]["result"]["resumed"] is True  # the finished run is reused, not trained twice
    assert again[3]["result"]["generated_now"] == 0
    with project.db.session() as session:
        assert session.scalar(select(func.count()).select_from(TrainingRun)) == runs
        assert (
            session.scalar(select(func.count()).select_from(Asset).where(Asset.kind == "evaluation"))
            == images
        )
        assert session.scalar(select(func.count()).select_from(Job).where(Job.kind == "chain")) == 2


def test_a_bad_option_is_refused_before_anything_is_queued(project: Project) -> None:
    character_with_dataset(project)
    backend = EmbeddedBackend(project, workers=1)
    with pytest.raises(InvalidInput, match="unknown chain option"):
        start_chain(project, backend, "lisa", {"epochs": 3})
    with pytest.raises(InvalidInput, match="skip"):
        start_chain(project, backend, "lisa", {"skip": ["lunch"]})
    with project.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0


def test_a_stage_that_would_overspend_stops_the_chain_cleanly(tmp_path: Path) -> None:
    """fal is configured but never reached: the budget is checked before anything is uploaded."""
    nowhere = "http://127.0.0.1:9"
    settings = Settings(
        project=tmp_path / "p", workers=2, fal_key="k", fal_queue_url=nowhere, fal_rest_url=nowhere
    )
    project = Project.init(settings)
    try:
        character_with_dataset(project)
        with project.db.session() as session:
            session.scalars(select(Character)).one().budget_usd = 1.0
        options = {
            "skip": ["sheet"],
            "trainer": "fal",
            "training": {"family": "flux", "base_model": "black-forest-labs/FLUX.1-dev", "max_steps": 1000},
        }

        stages = run_chain(project, options)

        assert [s["stage"] for s in stages] == ["gate", "dataset", "train"]  # nothing after the refusal
        assert stages[2]["status"] == "failed" and "budget" in stages[2]["error"], stages[2]
        with project.db.session() as session:
            assert session.scalars(select(Character)).one().spent_usd == 0.0
            run = session.scalars(select(TrainingRun)).one()
            assert run.status == "failed" and "budget" in (run.error or "")
    finally:
        project.close()
