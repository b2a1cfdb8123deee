"""The character sheet (anchors → picks → variations behind the identity gate) and enrichment edits."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from flenwheel.errors import InvalidInput
from flenwheel.jobs.base import LocalJobContext
from flenwheel.pipeline.enrich import enrich
from flenwheel.pipeline.sheet import (
    SheetConfig,
    generate_variations,
    load_sheet_config,
    pick_anchor,
    run_sheet,
    save_sheet_config,
)
from flenwheel.pipeline.spec import CharacterSpec, create_character_from_spec
from flenwheel.pipeline.stage import RenderSize, derive_seed
from flenwheel.pipeline.wizard import generate_base_images, pick_base
from flenwheel.providers.base import GenerationRequest
from flenwheel.providers.diffusers_local import LocalDiffusersProvider
from flenwheel.store.models import Asset
from flenwheel.store.project import Project

from face_engines import PhotoEngine
from patience import HANG_S
from photos import LISA, POSES, london

SPEC = CharacterSpec(name="mara", gender_presentation="woman", hair_colour="auburn")
TINY = {"width": 64, "height": 64, "steps": 2, "guidance": 7.0}


@pytest.fixture(scope="module")
def tiny() -> LocalDiffusersProvider:
    return LocalDiffusersProvider()


def assets(project: Project, **match: object) -> list[Asset]:
    with project.db.session() as session:
        rows = session.scalars(select(Asset).order_by(Asset.id)).all()
    return [a for a in rows if all(a.attributes.get(k) == v for k, v in match.items())]


def write_sheet(project: Project, **config: object) -> None:
    save_sheet_config(project, "mara", SheetConfig.model_validate(config))


def picked_base_of(project: Project, engine: object) -> int:
    result = generate_base_images(
        project, "mara", LocalJobContext(), providers=[engine], count=1, size=RenderSize(**TINY)
    )
    return pick_base(project, "mara", result.candidates[0].image.asset_id).asset_id


def test_the_default_sheet_until_edited_and_a_broken_legacy_file_is_a_clear_error(project: Project) -> None:
    create_character_from_spec(project, SPEC)
    config = load_sheet_config(project, "mara")
    assert [a.id for a in config.anchors] == [
        "front",
        "back",
        "side",
        "three_quarter",
        "arms_up",
        "bent_over",
        "seated",
        "hanging",
    ]
    assert not (project.root / "characters").exists()  # the sheet is in the store: no file is written
    legacy = project.root / "characters" / "1" / "sheet.yaml"  # where an earlier release kept it
    legacy.parent.mkdir(parents=True)
    legacy.write_text(
        yaml.safe_dump(
            {
                "anchors": [{"id": "front", "prompt": "standing"}],
                "variations": [{"id": "v", "anchor": "nope", "prompt": "x"}],
            }
        )
    )
    with pytest.raises(InvalidInput, match="names anchor 'nope'"):
        load_sheet_config(project, "mara")
    assert legacy.exists()  # not imported, not renamed: the user fixes it


def test_sheet_on_the_tiny_model_waits_for_picks_and_never_pretends_identity_passed(
    project: Project, tiny: LocalDiffusersProvider
) -> None:
    create_character_from_spec(project, SPEC)
    base_id = picked_base_of(project, tiny)
    write_sheet(
        project,
        candidates=2,
        image=TINY,
        anchors=[
            {"id": "front", "prompt": "standing"},
            {
                "id": "seated",
                "prompt": "seated on a chair",
                "pose": {"posture": "sitting"},
                "skeleton": "seated",
            },
        ],
        variations=[
            {"id": "smile", "anchor": "front", "prompt": "smiling", "strength": 0.35},
            {"id": "reading", "anchor": "seated", "prompt": "reading a book", "strength": 0.5},
        ],
    )
    seen: list[tuple[int, int, str]] = []
    first = run_sheet(
        project, "mara", LocalJobContext(lambda *p: seen.append(p)), pick_auto=False, providers=[tiny]
    )
    assert len(first.anchors.candidates) == 4 and first.anchors.picks == ()
    assert "image-to-image from the picked base" in first.anchors.method
    # the tiny engine takes a control image: the seated anchor is steered by its skeleton (ControlNet)
    assert "steered by each anchor's pose skeleton" in first.anchors.method
    assert {a.attributes.get("pose_control") for a in assets(project, stage="anchor")} == {None, "seated"}
    assert all(a.kind == "anchor" and a.parents == [base_id] for a in assets(project, stage="anchor"))
    assert first.variations.skipped == 2 and "has no pick yet" in first.variations.outcomes[0].reason
    assert seen[0][:2] == (0, 4) and (4, 4) in [s[:2] for s in seen]
    # the user picks; the variations are drawn from the picks
    front = [c for c in first.anchors.candidates if c.anchor == "front"][1].image.asset_id
    pick_anchor(project, "mara", "front", front)
    with pytest.raises(InvalidInput, match="not a candidate of anchor 'seated'"):
        pick_anchor(project, "mara", "seated", front)
    variations = generate_variations(project, "mara", LocalJobContext(), providers=[tiny])
    smile = variations.outcomes[0]
    assert (smile.variation, smile.status, variations.skipped) == ("smile", "not measurable", 1)
    assert "not counted as passed" in smile.reason and variations.passed == 0
    [stored] = assets(project, stage="variation")
    assert (
        stored.kind == "variation"
        and stored.parents == [front]
        and stored.attributes["identity"] == "not measurable"
    )
    # automatic picks by quality (faces not measurable), and a rerun reuses every stored anchor
    with project.db.session() as session:
        before = session.scalar(select(func.count()).select_from(Asset))
    again = run_sheet(project, "mara", LocalJobContext(), pick_auto=True, providers=[tiny])
    picks = {p.anchor: p for p in again.anchors.picks}
    assert again.anchors.reused == 4 and (picks["front"].by, picks["front"].asset_id) == ("user", front)
    assert picks["seated"].by == "auto" and "identity not measurable" in picks["seated"].reason
    # the tiny model draws no people: its pose is not measurable, never passed, and blocks no pick
    seated = [c for c in again.anchors.candidates if c.anchor == "seated"]
    assert all(c.pose is not None and c.pose.status == "not measurable" for c in seated)
    assert "pose not measurable: no person found" in picks["seated"].reason
    assert again.variations.not_measurable == 2 and again.variations.skipped == 0
    with project.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Asset)) == before + 1  # only "reading" is new


def test_the_drift_gate_redraws_another_person_and_reports_it_after_the_limit(any_project: Project) -> None:
    """On SQLite and on PostgreSQL: threads store images side by side."""
    project = any_project
    create_character_from_spec(project, SPEC)
    fingerprint = SPEC.fingerprint()

    def photo(request: GenerationRequest) -> Path:
        if request.kind == "text_to_image":
            return LISA[0]  # the base
        if "standing" in request.prompt:  # anchor candidates: a stranger, then the character
            return london(6) if request.seed == derive_seed(fingerprint, "anchor", "front", 0) else LISA[1]
        if "pull-up" in request.prompt:
            return london(4)  # always someone else
        if "smiling" in request.prompt:  # someone else first, the character on the redraw
            return london(5) if request.seed == derive_seed(fingerprint, "variation", "smile", 0) else LISA[3]
        return LISA[2]

    engine = PhotoEngine("comfyui", allows_nsfw=True, pick=photo)
    picked_base_of(project, engine)
    write_sheet(
        project,
        candidates=2,
        identity_retries=2,
        image=TINY,
        anchors=[{"id": "front", "prompt": "standing"}],
        variations=[
            {"id": "smile", "anchor": "front", "prompt": "smiling"},
            {"id": "pull_up", "anchor": "front", "prompt": "pull-up"},
            {"id": "wave", "anchor": "front", "prompt": "waving"},
        ],
    )
    result = run_sheet(project, "mara", LocalJobContext(), providers=[engine])
    [pick] = result.anchors.picks
    assert pick.asset_id == next(c for c in result.anchors.candidates if c.candidate == 1).image.asset_id
    assert "closest face to the base" in pick.reason
    outcomes = {o.variation: o for o in result.variations.outcomes}
    assert outcomes["wave"].status == "passed" and outcomes["wave"].attempts == 1
    assert outcomes["smile"].status == "passed" and outcomes["smile"].attempts == 2
    assert outcomes["pull_up"].status == "drifted" and outcomes["pull_up"].attempts == 3
    assert "after 3 attempts (the limit)" in outcomes["pull_up"].reason
    assert len([r for r in engine.calls if "pull-up" in r.prompt]) == 3
    assert (result.variations.passed, result.variations.drifted) == (2, 1)
    rejected = assets(project, stage="variation", rejected=True)
    assert sorted(a.attributes["variation"] for a in rejected) == ["pull_up", "pull_up", "smile"]


def test_per_provider_concurrency_is_kept(project: Project, tiny: LocalDiffusersProvider) -> None:
    create_character_from_spec(project, SPEC)
    write_sheet(
        project,
        candidates=3,
        image=TINY,
        anchors=[{"id": "front", "prompt": "standing"}, {"id": "back", "prompt": "from behind"}],
        variations=[],
    )
    # pairs meet at the barrier: two calls are in flight together, never three
    engine = PhotoEngine(
        "fal",
        pick=lambda r: LISA[r.seed % 8],
        max_concurrency=2,
        barrier=threading.Barrier(2, timeout=HANG_S),
    )
    result = run_sheet(project, "mara", LocalJobContext(), providers=[engine])
    assert len(engine.calls) == 6 and engine.max_in_flight == 2
    assert "text-to-image from the spec" in result.anchors.method  # no picked base yet


def test_enrichment_edits_good_images_and_links_each_output_to_its_source(
    project: Project, tiny: LocalDiffusersProvider
) -> None:
    create_character_from_spec(project, SPEC)
    picked_base_of(project, tiny)
    write_sheet(
        project,
        candidates=1,
        image=TINY,
        anchors=[{"id": "front", "prompt": "standing"}],
        variations=[{"id": "smile", "anchor": "front", "prompt": "smiling"}],
    )
    run_sheet(project, "mara", LocalJobContext(), providers=[tiny])
    result = enrich(
        project, "mara", LocalJobContext(), per_source=4, size=RenderSize(**TINY), providers=[tiny]
    )
    assert "no image is labelled good yet" in result.source_rule and len(result.sources) == 2
    assert len(result.outcomes) == 8 and result.not_measurable == 8 and result.passed == 0
    groups = {o.template.split("_")[0] for o in result.outcomes}
    assert groups == {"background", "lighting", "style", "camera"}
    for outcome in result.outcomes:
        [asset] = [a for a in assets(project, stage="enriched") if a.id == outcome.image.asset_id]
        assert asset.kind == "enriched" and asset.parents == [outcome.source_asset_id]
        assert asset.attributes["template"] == outcome.template and "ohwx_mara woman" in (asset.prompt or "")


def test_enrichment_with_real_faces_passes_the_same_person(project: Project) -> None:
    create_character_from_spec(project, SPEC)
    engine = PhotoEngine(
        "comfyui",
        allows_nsfw=True,
        pick=lambda r: (
            LISA[0] if r.kind == "text_to_image" else (london(7) if "sketch" in r.prompt else LISA[5])
        ),
    )
    base_id = picked_base_of(project, engine)
    result = enrich(
        project,
        "mara",
        LocalJobContext(),
        template_ids=["background_beach", "style_sketch"],
        source_ids=[base_id],
        providers=[engine],
        identity_retries=1,
    )
    by_template = {o.template: o for o in result.outcomes}
    assert by_template["background_beach"].status == "passed"
    assert by_template["style_sketch"].status == "drifted" and by_template["style_sketch"].attempts == 2


def test_an_anchor_in_the_wrong_body_pose_is_flagged_and_not_picked(project: Project) -> None:
    """Real photos of people in known poses stand in for the engine's drawings: a candidate standing with
    its arms down for "arms up" is pose drift, the one with raised arms is picked; when every "seated"
    candidate stands, the pick says so. The default sheet's anchors carry their poses."""
    create_character_from_spec(project, SPEC)
    fingerprint = SPEC.fingerprint()
    defaults = {a.id: a.pose for a in load_sheet_config(project, "mara").anchors}
    assert all(defaults.values()) and defaults["seated"] is not None
    assert defaults["seated"].posture == "sitting"

    def photo(request: GenerationRequest) -> Path:
        if "raised" in request.prompt:
            first = request.seed == derive_seed(fingerprint, "anchor", "arms_up", 0)
            return POSES / ("standing.jpg" if first else "arms_up.jpg")
        return POSES / "t_pose.jpg"

    engine = PhotoEngine("comfyui", pick=photo)
    write_sheet(
        project,
        candidates=2,
        image=TINY,
        anchors=[
            {
                "id": "arms_up",
                "prompt": "both arms raised",
                "pose": {"posture": "standing", "arms": "arms up"},
            },
            {"id": "seated", "prompt": "seated on a chair", "pose": {"posture": "sitting"}},
        ],
        variations=[],
    )
    result = run_sheet(project, "mara", LocalJobContext(), providers=[engine])
    by_anchor = {(c.anchor, c.candidate): c for c in result.anchors.candidates}
    drifted = by_anchor[("arms_up", 0)].pose
    assert drifted is not None and drifted.status == "drifted"
    assert "asked for arms up, measured arms down" in drifted.reason
    assert by_anchor[("arms_up", 1)].pose is not None and by_anchor[("arms_up", 1)].pose.status == "passed"
    assert result.anchors.pose_drifted == 3  # arms down once, standing twice for "seated"
    picks = {p.anchor: p for p in result.anchors.picks}
    assert picks["arms_up"].asset_id == by_anchor[("arms_up", 1)].image.asset_id
    assert "every candidate drifted from the pose" in picks["seated"].reason
    stored = assets(project, stage="anchor", anchor="arms_up", candidate=0)
    assert stored[0].attributes["pose"] == "drifted"


def test_one_variation_is_redrawn_from_its_picked_anchor_with_new_seeds(project: Project) -> None:
    """Seed 004's "redraw one": a new drawing of one variation from its picked anchor, through the same gate;
    the earlier one stays on record. Real photos stand in for the drawings (the redraw gets lisa's face)."""
    from flenwheel.pipeline.sheet import redraw_variation

    create_character_from_spec(project, SPEC)
    engine = PhotoEngine(
        "comfyui", allows_nsfw=True, pick=lambda r: LISA[0] if r.kind == "text_to_image" else LISA[2]
    )
    picked_base_of(project, engine)
    write_sheet(
        project,
        candidates=1,
        anchors=[{"id": "front", "prompt": "standing"}, {"id": "back", "prompt": "from behind"}],
        variations=[
            {"id": "smile", "anchor": "front", "prompt": "smiling"},
            {"id": "wave", "anchor": "back", "prompt": "waving"},
        ],
    )
    run_sheet(project, "mara", LocalJobContext(), providers=[engine])
    [first] = assets(project, stage="variation", variation="smile")
    again = redraw_variation(project, "mara", "smile", LocalJobContext(), providers=[engine])
    assert again.status == "passed" and again.image is not None and again.image.asset_id != first.id
    drawn = assets(project, stage="variation", variation="smile")
    assert [a.attributes.get("redraw") for a in drawn] == [None, 1]  # the first stays on record
    assert drawn[1].seed != first.seed and drawn[1].parents == [first.parents[0]]  # the same anchor
    with pytest.raises(InvalidInput, match="variations: smile, wave"):
        redraw_variation(project, "mara", "frown", LocalJobContext(), providers=[engine])
