"""Generation for a character: routing within budget and NSFW policy, and provenance on every stored image."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from flenwheel.characters import create_character
from flenwheel.domain import AssetKind
from flenwheel.images import read_provenance
from flenwheel.pipeline.generation import run_generation
from flenwheel.providers.base import TextToImage
from flenwheel.providers.diffusers_local import LocalDiffusersProvider
from flenwheel.providers.router import NoProvider
from flenwheel.store.budget import BudgetExceeded
from flenwheel.store.models import Asset, Character, RunCall
from flenwheel.store.project import Project

from engines import ScriptedEngine

TINY = TextToImage(prompt="photo of ohwx woman, studio light", seed=5, steps=2, width=64, height=64)


def _count(project: Project, model=Asset) -> int:
    with project.db.session() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_tiny_generation_is_stored_with_provenance_and_says_it_draws_no_faces(project: Project) -> None:
    create_character(project, "lisa", "ohwx", "woman")
    outcome = run_generation(project, "lisa", TINY, providers=[LocalDiffusersProvider()])
    [output] = outcome.outputs
    assert outcome.provider == "local" and outcome.model == "tiny" and "draws no faces" in outcome.note
    parameters, record = read_provenance(output.file.read_bytes())
    assert parameters.startswith("photo of ohwx woman, studio light\n") and "Seed: 5" in parameters
    assert record["seed"] == 5 and record["provider"] == "local" and record["kind"] == "generated"
    with project.db.session() as session:
        asset = session.get_one(Asset, output.asset_id)
        assert (asset.kind, asset.seed, asset.prompt, asset.cost_usd) == ("generated", 5, TINY.prompt, 0.0)
        assert asset.nsfw_score is not None and asset.nsfw_score < 0.5
    again = run_generation(project, "lisa", TINY, providers=[LocalDiffusersProvider()])
    assert again.outputs[0].asset_id == output.asset_id  # same seed, same pixels: the same asset


def test_costs_are_charged_and_the_budget_is_a_hard_cap(project: Project) -> None:
    create_character(project, "lisa", "ohwx", "woman", budget_usd=0.10)
    paid = ScriptedEngine("fal", price=0.04)
    run_generation(project, "lisa", TINY.model_copy(update={"count": 2}), providers=[paid])
    with project.db.session() as session:
        assert session.scalar(select(Character.spent_usd)) == pytest.approx(0.08)
        assert sorted(session.scalars(select(Asset.cost_usd))) == [0.04, 0.04]
    with pytest.raises(BudgetExceeded, match="budget left"):
        run_generation(project, "lisa", TINY.model_copy(update={"seed": 6}), providers=[paid])
    assert (
        len(paid.calls) == 1 and _count(project) == 2
    )  # refused before submission: nothing paid, nothing stored


def test_nsfw_character_never_reaches_an_external_provider(project: Project) -> None:
    create_character(project, "nova", "ohwx_nova", "woman", nsfw=True)
    external = ScriptedEngine("replicate")
    with pytest.raises(NoProvider, match="NSFW work stays on self-hosted engines"):
        run_generation(project, "nova", TINY, providers=[external])
    local = ScriptedEngine("comfyui", allows_nsfw=True)
    outcome = run_generation(project, "nova", TINY, providers=[external, local])
    assert outcome.provider == "comfyui" and outcome.nsfw_routing and external.calls == []


def test_the_remote_id_is_kept_for_a_resumed_run(project: Project) -> None:
    create_character(project, "lisa", "ohwx", "woman")
    run_generation(project, "lisa", TINY, providers=[ScriptedEngine("fal")], kind=AssetKind.GENERATED)
    with project.db.session() as session:
        call = session.scalar(select(RunCall))
        assert (call.engine, call.remote_id, call.status) == ("fal", "fal-1", "done")
