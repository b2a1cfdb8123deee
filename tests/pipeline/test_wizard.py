"""The wizard stages: distinct base images in parallel, the pick, the skin pass, the profile picture set."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import select

from flenwheel.config import Settings
from flenwheel.errors import InvalidInput
from flenwheel.images import read_provenance
from flenwheel.jobs.base import LocalJobContext
from flenwheel.pipeline.spec import CharacterSpec, create_character_from_spec
from flenwheel.pipeline.stage import RenderSize, derive_seed
from flenwheel.pipeline.wizard import (
    BY_FACES,
    FACES_NOT_MEASURABLE,
    generate_base_images,
    generate_profile_set,
    pick_base,
    regenerate_position,
    skin_pass,
)
from flenwheel.providers.base import Capability, GenerationRequest, IdentityReference, ImageToImage
from flenwheel.providers.diffusers_local import LocalDiffusersProvider
from flenwheel.store.models import Asset, Character
from flenwheel.store.project import Project

from face_engines import PhotoEngine
from patience import HANG_S
from photos import LISA, london

TINY = RenderSize(width=64, height=64, steps=2)
SPEC = CharacterSpec(
    name="mara",
    age_range="28-32",
    gender_presentation="woman",
    hair_colour="auburn",
    hair_length="shoulder-length",
    eye_colour="green",
    distinguishing_features=("freckles",),
)


@pytest.fixture(scope="module")
def tiny() -> LocalDiffusersProvider:
    return LocalDiffusersProvider()


def assets(project: Project, **match: object) -> list[Asset]:
    with project.db.session() as session:
        rows = session.scalars(select(Asset).order_by(Asset.id)).all()
    return [a for a in rows if all(a.attributes.get(k) == v for k, v in match.items())]


def base_seeds(spec: CharacterSpec, slot: int, attempt: int = 0) -> int:
    return derive_seed(spec.fingerprint(), "base", slot, attempt)


def test_base_images_on_the_tiny_model_are_stored_and_say_faces_are_not_measurable(
    project: Project, tiny: LocalDiffusersProvider, tmp_path: Path
) -> None:
    info = create_character_from_spec(project, SPEC)
    assert (info.token, info.class_word) == ("ohwx_mara", "woman")
    seen: list[tuple[int, int, str]] = []
    landed: list[int] = []
    result = generate_base_images(
        project,
        "mara",
        LocalJobContext(lambda *p: seen.append(p)),
        size=TINY,
        providers=[tiny],
        on_image=lambda image: landed.append(image.asset_id),
    )
    assert result.distinctness == FACES_NOT_MEASURABLE and "draws no faces" in (result.note or "")
    assert len(result.candidates) == 3 and result.regenerated == 0 and result.near_duplicates_left == ()
    assert [s[:2] for s in seen] == [(1, 3), (2, 3), (3, 3)] and sorted(landed) == sorted(
        c.image.asset_id for c in result.candidates
    )
    stored = assets(project, stage="base")
    assert [(a.kind, a.attributes["slot"], a.attributes["picked"]) for a in stored] == [
        ("base", slot, False) for slot in range(3)
    ]
    _, record = read_provenance(Path(result.candidates[0].image.file).read_bytes())
    assert (
        record is not None
        and record["kind"] == "base"
        and record["prompt"].startswith("photorealistic photo")
    )
    assert "ohwx_mara woman" in record["prompt"] and "auburn hair" in record["prompt"]
    # the same spec in another project: the same seeds, the same pixels
    other = Project.init(Settings(project=tmp_path / "other"))
    try:
        create_character_from_spec(other, SPEC)
        again = generate_base_images(other, "mara", LocalJobContext(), size=TINY, providers=[tiny])
    finally:
        other.close()
    assert [c.image.seed for c in again.candidates] == [base_seeds(SPEC, slot) for slot in range(3)]
    assert [Path(c.image.file).read_bytes() for c in again.candidates] == [
        Path(c.image.file).read_bytes() for c in result.candidates
    ]


def test_base_images_are_submitted_together_and_charged(any_project: Project) -> None:
    """On SQLite and on PostgreSQL: threads store images side by side."""
    project = any_project
    create_character_from_spec(project, SPEC, budget_usd=1.0)
    people = {base_seeds(SPEC, slot): london(slot + 1) for slot in range(3)}
    # Each call waits until all three are in flight: submitted one after another, they would wait until HANG_S.
    engine = PhotoEngine(
        "fal", pick=lambda r: people[r.seed], price=0.03, barrier=threading.Barrier(3, timeout=HANG_S)
    )
    result = generate_base_images(project, "mara", LocalJobContext(), providers=[engine])
    assert engine.max_in_flight == 3 and len(engine.calls) == 3
    assert (
        result.distinctness == BY_FACES
        and result.regenerated == 0
        and all(c.face_found for c in result.candidates)
    )
    assert result.cost_usd == pytest.approx(0.09)
    with project.db.session() as session:
        assert session.scalar(select(Character.spent_usd)) == pytest.approx(0.09)


def test_the_same_person_twice_is_regenerated_with_a_new_seed(project: Project) -> None:
    create_character_from_spec(project, SPEC)
    script = {
        base_seeds(SPEC, 0): LISA[0],
        base_seeds(SPEC, 1): LISA[1],  # the same woman as slot 0: a near-duplicate
        base_seeds(SPEC, 2): london(1),
        base_seeds(SPEC, 1, attempt=1): london(2),
    }
    engine = PhotoEngine("fal", pick=lambda r: script[r.seed])
    result = generate_base_images(project, "mara", LocalJobContext(), providers=[engine])
    assert result.regenerated == 1 and len(engine.calls) == 4 and result.near_duplicates_left == ()
    assert [(c.slot, c.attempt) for c in result.candidates] == [(0, 0), (1, 1), (2, 0)]
    [replaced] = assets(project, replaced=True)
    assert replaced.seed == base_seeds(SPEC, 1) and "same face" in replaced.attributes["reason"]


def test_a_duplicate_that_keeps_coming_back_is_reported(project: Project) -> None:
    create_character_from_spec(project, SPEC)
    engine = PhotoEngine("fal", pick=lambda r: LISA[r.seed % 4])  # always the same woman
    result = generate_base_images(
        project, "mara", LocalJobContext(), providers=[engine], count=2, max_retries=1
    )
    assert result.regenerated == 1 and len(result.near_duplicates_left) == 1


def test_pick_and_skin_pass_on_the_tiny_model_flag_identity_as_not_measurable(
    project: Project, tiny: LocalDiffusersProvider
) -> None:
    create_character_from_spec(project, SPEC)
    result = generate_base_images(project, "mara", LocalJobContext(), size=TINY, providers=[tiny])
    chosen = result.candidates[1].image.asset_id
    pick_base(project, "mara", chosen)
    assert [a.id for a in assets(project, picked=True)] == [chosen]
    skin = skin_pass(project, "mara", LocalJobContext(), size=TINY, providers=[tiny])
    assert skin.identity.status == "not measurable" and "flagged" in skin.message
    [enhanced] = assets(project, skin_pass=True)
    assert enhanced.kind == "base" and enhanced.parents == [chosen] and enhanced.denoise == pytest.approx(0.3)
    assert [a.id for a in assets(project, picked=True)] == [enhanced.id] == [skin.picked_asset_id]


def test_a_skin_pass_that_changes_the_face_keeps_the_original(project: Project) -> None:
    create_character_from_spec(project, SPEC)
    engine = PhotoEngine(
        "comfyui", allows_nsfw=True, pick=lambda r: london(3) if r.kind == "image_to_image" else LISA[0]
    )
    result = generate_base_images(project, "mara", LocalJobContext(), providers=[engine], count=1)
    pick_base(project, "mara", result.candidates[0].image.asset_id)
    skin = skin_pass(project, "mara", LocalJobContext(), providers=[engine])
    assert skin.identity.status == "drifted" and skin.identity.distance > 0.48
    assert (
        skin.picked_asset_id == result.candidates[0].image.asset_id
        and "original stays picked" in skin.message
    )


def test_profile_set_streams_eight_positions_for_a_sfw_character(
    project: Project, tiny: LocalDiffusersProvider
) -> None:
    create_character_from_spec(project, SPEC)
    seen: list[tuple[int, int, str]] = []
    streamed: list[str] = []
    result = generate_profile_set(
        project,
        "mara",
        LocalJobContext(lambda *p: seen.append(p)),
        size=TINY,
        providers=[tiny],
        on_image=lambda image: streamed.append(image.position),
    )
    assert result.total == 8 == len(streamed) and not any(i.nsfw for i in result.images)
    assert seen[0][:2] == (0, 8) and seen[-1][:2] == (8, 8)
    assert result.method == "fast: text-to-image from the spec"
    stored = assets(project, stage="profile")
    assert {a.attributes["position"] for a in stored} == set(streamed) and {a.kind for a in stored} == {
        "generated"
    }
    # regenerate one position: a new seed, and the new image replaces the old one
    old = next(a for a in stored if a.attributes["position"] == "cafe")
    new = regenerate_position(project, "mara", "cafe", LocalJobContext(), size=TINY, providers=[tiny])
    assert new.image.seed != old.seed and new.image.asset_id != old.id
    current = assets(project, position="cafe", current=True)
    assert [a.id for a in current] == [new.image.asset_id]
    [retired] = assets(project, position="cafe", current=False)
    assert retired.attributes["replaced_by"] == new.image.asset_id
    # with a prompt tweak (seed 003): added to the position's prompt and kept on the image
    tweaked = regenerate_position(
        project, "mara", "cafe", LocalJobContext(), size=TINY, providers=[tiny], tweak="  hands in   pockets "
    )
    [current] = assets(project, position="cafe", current=True)
    assert current.id == tweaked.image.asset_id and current.attributes["tweak"] == "hands in pockets"
    assert (current.prompt or "").count("hands in pockets") == 1 and "cafe" in (current.prompt or "")
    with pytest.raises(InvalidInput, match="under 300"):
        regenerate_position(project, "mara", "cafe", LocalJobContext(), providers=[tiny], tweak="x" * 400)


def test_nsfw_positions_only_when_allowed_and_only_on_self_hosted_engines(project: Project) -> None:
    external = PhotoEngine("fal", pick=lambda r: LISA[0])
    own = PhotoEngine("comfyui", allows_nsfw=True, pick=lambda r: LISA[1])
    create_character_from_spec(project, SPEC)
    sfw = generate_profile_set(project, "mara", LocalJobContext(), providers=[external, own])
    assert sfw.total == 8 and len(external.calls) == 8 and own.calls == []  # SFW work may go out
    create_character_from_spec(project, SPEC.model_copy(update={"name": "nova", "nsfw_allowed": True}))
    external.calls.clear()
    nsfw = generate_profile_set(project, "nova", LocalJobContext(), providers=[external, own])
    assert nsfw.total == 10 and {i.position for i in nsfw.images if i.nsfw} == {"boudoir", "nude"}
    assert external.calls == [] and len(own.calls) == 10
    marked = [r for r in own.calls if r.nsfw]
    assert len(marked) == 2 and all("boudoir" in r.prompt or "nude" in r.prompt for r in marked)


def test_consistent_mode_says_how_it_keeps_the_face(project: Project, tiny: LocalDiffusersProvider) -> None:
    create_character_from_spec(project, SPEC)
    base = generate_base_images(project, "mara", LocalJobContext(), size=TINY, providers=[tiny], count=1)
    base_id = base.candidates[0].image.asset_id
    pick_base(project, "mara", base_id)
    edited = generate_profile_set(
        project, "mara", LocalJobContext(), mode="consistent", size=TINY, providers=[tiny]
    )
    assert (
        "image-to-image of the picked base" in edited.method
        and "no engine with identity reference" in edited.method
    )
    assert all(
        a.parents == [base_id] and a.denoise == pytest.approx(0.45)
        for a in assets(project, mode="consistent")
    )
    requests: list[GenerationRequest] = []

    def remember(request: GenerationRequest) -> Path:
        requests.append(request)
        return LISA[2]

    adapter = PhotoEngine(
        "comfyui", capabilities=frozenset({Capability.IDENTITY_REFERENCE}), allows_nsfw=True, pick=remember
    )
    referenced = generate_profile_set(
        project, "mara", LocalJobContext(), mode="consistent", size=TINY, providers=[adapter, tiny]
    )
    assert referenced.method == "consistent: identity reference on comfyui"
    assert len(requests) == 8 and all(isinstance(r, IdentityReference) for r in requests)
    assert not any(isinstance(r, ImageToImage) for r in requests)


def test_a_failing_engine_fails_the_stage_with_its_message_and_cancel_stops_it(project: Project) -> None:
    from flenwheel.jobs.base import JobCancelled
    from flenwheel.providers.base import ProviderError

    create_character_from_spec(project, SPEC)

    def refuse(request: GenerationRequest) -> Path:
        if request.seed == base_seeds(SPEC, 1):
            raise ProviderError("fal", "HTTP 422: prompt rejected", transient=False)
        return london(1 + request.seed % 5)

    with pytest.raises(ProviderError, match="HTTP 422: prompt rejected"):
        generate_base_images(project, "mara", LocalJobContext(), providers=[PhotoEngine("fal", pick=refuse)])
    cancelled = LocalJobContext()
    cancelled.cancel()
    engine = PhotoEngine("fal", pick=lambda r: LISA[0])
    with pytest.raises(JobCancelled):
        generate_profile_set(project, "mara", cancelled, providers=[engine])
    assert engine.calls == []  # nothing submitted, nothing paid
