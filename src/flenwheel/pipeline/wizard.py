"""The wizard stages of seed 000/003: N distinct base images in parallel, the pick, the skin pass, and the
profile picture set (fast or consistent mode, streamed as each image lands, one position regenerable).

Every image goes through the router (`run_generation`), so budgets, provenance and NSFW routing apply.
Seeds derive from the character spec, so the same spec gives the same seeds and the same pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any, Literal

from flenwheel.domain import AssetKind, Frozen
from flenwheel.errors import InvalidInput
from flenwheel.jobs.base import JobContext
from flenwheel.pipeline.spec import NEGATIVE, character_spec
from flenwheel.pipeline.stage import (
    FaceProbe,
    IdentityCheck,
    RenderSize,
    StageEngines,
    StageImage,
    derive_seed,
    generate_asset,
    identity_check,
    picked_base,
    request_size,
    require_picked_base,
    run_parallel,
    stage_assets,
    update_attributes,
)
from flenwheel.providers.base import (
    Capability,
    GenerationRequest,
    IdentityReference,
    ImageProvider,
    ImageToImage,
    TextToImage,
)
from flenwheel.quality import hash_distance
from flenwheel.store.models import Asset
from flenwheel.store.project import Project, get_character

FACES_NOT_MEASURABLE = "faces not measurable: distinctness by perceptual hash"
BY_FACES = "face embeddings"
SKIN_PROMPT = "natural skin texture, visible pores, subtle freckles and small blemishes, sharp detail"
SKIN_STRENGTH = 0.3
CONSISTENT_STRENGTH = 0.45  # seed 004: low strength keeps the person


# -- base images ------------------------------------------------------------------------------------------
class BaseCandidate(Frozen):
    slot: int
    attempt: int
    image: StageImage
    face_found: bool


class BaseImagesResult(Frozen):
    """The candidates to pick from, how distinctness was judged, and what had to be regenerated."""

    candidates: tuple[BaseCandidate, ...]
    distinctness: str  # BY_FACES, or FACES_NOT_MEASURABLE
    regenerated: int
    near_duplicates_left: tuple[tuple[int, int], ...]  # asset id pairs still too alike after the retries
    cost_usd: float
    note: str | None


def generate_base_images(
    project: Project,
    character_name: str,
    ctx: JobContext,
    count: int = 3,
    size: RenderSize | None = None,
    providers: Sequence[ImageProvider] | None = None,
    max_retries: int = 2,
    on_image: Callable[[StageImage], None] | None = None,
) -> BaseImagesResult:
    """`count` candidates submitted at once; a near-duplicate (same face, or same perceptual hash when no
    face is measurable) is regenerated with a new seed, at most `max_retries` times per slot."""
    if not 1 <= count <= 10:
        raise InvalidInput(f"base image count {count}: give 1 to 10")
    size = size or RenderSize()
    spec = character_spec(project, character_name)
    engines = StageEngines.for_project(project, providers)
    probe = FaceProbe(project)
    threshold = project.settings.identity_threshold
    fingerprint = spec.fingerprint()
    done, total, regenerated = 0, count, 0
    current: dict[int, BaseCandidate] = {}

    def draw(slot: int, attempt: int) -> BaseCandidate:
        request = TextToImage(
            prompt=spec.base_prompt(),
            negative=NEGATIVE,
            seed=derive_seed(fingerprint, "base", slot, attempt),
            nsfw=False,
            **size.request_fields(),
        )
        attributes = {"stage": "base", "slot": slot, "attempt": attempt, "picked": False}
        image = generate_asset(project, character_name, request, AssetKind.BASE, attributes, engines, ctx)
        return BaseCandidate(
            slot=slot, attempt=attempt, image=image, face_found=probe.embedding(image.asset_id) is not None
        )

    def land(batch: list[tuple[int, int]]) -> None:
        nonlocal done
        for candidate in run_parallel([partial(draw, s, a) for s, a in batch], engines.workers):
            current[candidate.slot] = candidate
            done += 1
            ctx.progress(done, total, f"base image {done} of {total}")
            if on_image is not None:
                on_image(candidate.image)

    land([(slot, 0) for slot in range(count)])
    by_faces = all(c.face_found for c in current.values())
    while True:
        duplicates = _near_duplicates(project, probe, list(current.values()), threshold)
        by_faces = by_faces and all(c.face_found for c in current.values())
        redo = sorted({later for _earlier, later, _why in duplicates if current[later].attempt < max_retries})
        if not redo:
            break
        for earlier, later, why in duplicates:
            if later in redo:
                update_attributes(
                    project,
                    current[later].image.asset_id,
                    replaced=True,
                    reason=f"near-duplicate of asset {current[earlier].image.asset_id} ({why})",
                )
        total += len(redo)
        regenerated += len(redo)
        land([(slot, current[slot].attempt + 1) for slot in redo])
    candidates = tuple(current[slot] for slot in sorted(current))
    left = tuple((current[a].image.asset_id, current[b].image.asset_id) for a, b, _ in duplicates)
    return BaseImagesResult(
        candidates=candidates,
        distinctness=BY_FACES if by_faces else FACES_NOT_MEASURABLE,
        regenerated=regenerated,
        near_duplicates_left=left,
        cost_usd=round(sum(c.image.cost_usd for c in candidates), 6),
        note=next((c.image.note for c in candidates if c.image.note), None),
    )


def _near_duplicates(
    project: Project, probe: FaceProbe, candidates: list[BaseCandidate], threshold: float
) -> list[tuple[int, int, str]]:
    """(earlier slot, later slot, why) for each pair that is the same face — or, where a face is missing,
    the same perceptual hash."""
    bits = project.settings.near_duplicate_bits
    found = []
    ordered = sorted(candidates, key=lambda c: c.slot)
    for i, first in enumerate(ordered):
        for second in ordered[i + 1 :]:
            a, b = probe.embedding(first.image.asset_id), probe.embedding(second.image.asset_id)
            if a is not None and b is not None:
                check = identity_check(a, b, threshold)
                if check.status == "passed":
                    found.append((first.slot, second.slot, f"same face, distance {check.distance}"))
                continue
            qa, qb = probe.analysis(first.image.asset_id), probe.analysis(second.image.asset_id)
            if qa is not None and qb is not None:
                distance = hash_distance(qa.quality.phash, qb.quality.phash)
                if distance <= bits:
                    found.append((first.slot, second.slot, f"perceptual hash {distance} bits apart"))
    return found


def pick_base(project: Project, character_name: str, asset_id: int) -> StageImage:
    """Mark one base image as the character's pick (and no other)."""
    with project.db.session() as session:
        character = get_character(session, character_name)
        asset = session.get(Asset, asset_id)
        if asset is None or asset.character_id != character.id or asset.kind != AssetKind.BASE:
            raise InvalidInput(f"asset {asset_id} is not a base image of {character_name!r}")
    for other in stage_assets(project, character_name, "base", picked=True):
        update_attributes(project, other.id, picked=False)
    update_attributes(project, asset_id, stage="base", picked=True)
    return _stage_image(project, asset_id)


def _stage_image(project: Project, asset_id: int) -> StageImage:
    with project.db.session() as session:
        asset = session.get_one(Asset, asset_id)
        return StageImage(
            asset_id=asset.id,
            kind=asset.kind,
            seed=asset.seed,
            provider=asset.provider or "",
            model=asset.model or "",
            width=asset.width,
            height=asset.height,
            cost_usd=asset.cost_usd,
            file=str(project.blobs.path(asset.sha256)),
            attributes=dict(asset.attributes),
        )


# -- skin pass --------------------------------------------------------------------------------------------
class SkinPassResult(Frozen):
    source_asset_id: int
    image: StageImage
    identity: IdentityCheck
    picked_asset_id: int  # the enhanced image, unless the pass changed the face
    message: str


def skin_pass(
    project: Project,
    character_name: str,
    ctx: JobContext,
    size: RenderSize | None = None,
    providers: Sequence[ImageProvider] | None = None,
    strength: float = SKIN_STRENGTH,
) -> SkinPassResult:
    """Low-strength image-to-image of the picked base with a skin-detail prompt; the face is compared
    before and after, and the enhanced image becomes the pick only if it is still the same person."""
    base = require_picked_base(project, character_name)
    spec = character_spec(project, character_name)
    engines = StageEngines.for_project(project, providers)
    probe = FaceProbe(project)
    request = ImageToImage(
        prompt=spec.prompt(SKIN_PROMPT),
        negative=NEGATIVE,
        image=project.blobs.get(base.sha256),
        strength=strength,
        seed=derive_seed(spec.fingerprint(), "skin", base.sha256),
        **request_size(base, size or RenderSize(), strength),
    )
    attributes = {"stage": "base", "skin_pass": True, "picked": False}
    ctx.progress(0, 1, "skin pass")
    image = generate_asset(
        project, character_name, request, AssetKind.BASE, attributes, engines, ctx, parents=(base.id,)
    )
    check = identity_check(
        probe.embedding(base.id), probe.embedding(image.asset_id), project.settings.identity_threshold
    )
    update_attributes(project, image.asset_id, identity=check.status, identity_distance=check.distance)
    if check.status == "drifted":
        picked, message = (
            base.id,
            f"the skin pass changed the face ({check.reason}): the original stays picked",
        )
    else:
        pick_base(project, character_name, image.asset_id)
        picked = image.asset_id
        message = (
            "enhanced image picked; identity " + check.reason
            if check.status == "passed"
            else f"enhanced image picked but flagged: identity {check.reason}"
        )
    ctx.progress(1, 1, "skin pass done")
    return SkinPassResult(
        source_asset_id=base.id,
        image=_stage_image(project, image.asset_id),
        identity=check,
        picked_asset_id=picked,
        message=message,
    )


# -- profile picture set ----------------------------------------------------------------------------------
class ProfilePosition(Frozen):
    id: str
    prompt: str
    nsfw: bool = False


PROFILE_POSITIONS: tuple[ProfilePosition, ...] = (
    ProfilePosition(id="headshot", prompt="close-up headshot, looking at the camera, soft window light"),
    ProfilePosition(id="smiling", prompt="candid smiling portrait outdoors, golden hour"),
    ProfilePosition(id="three_quarter", prompt="three-quarter view, upper body, city street"),
    ProfilePosition(id="side_profile", prompt="side profile portrait, plain studio backdrop"),
    ProfilePosition(id="full_body", prompt="full body, standing, casual outfit, park"),
    ProfilePosition(id="cafe", prompt="sitting in a cafe, upper body, natural light"),
    ProfilePosition(id="fitness", prompt="athletic wear, gym, upper body"),
    ProfilePosition(id="evening", prompt="evening outfit, upper body, warm indoor light"),
    ProfilePosition(id="boudoir", prompt="boudoir photo, lingerie, bedroom, soft light", nsfw=True),
    ProfilePosition(id="nude", prompt="artistic nude photo, bedroom, soft light", nsfw=True),
)
ProfileMode = Literal["fast", "consistent"]


def profile_positions(nsfw_allowed: bool) -> tuple[ProfilePosition, ...]:
    """8 positions, 10 when the character allows NSFW."""
    return tuple(p for p in PROFILE_POSITIONS if nsfw_allowed or not p.nsfw)


class ProfileImage(Frozen):
    position: str
    nsfw: bool
    mode: ProfileMode
    method: str
    image: StageImage


class ProfileSetResult(Frozen):
    images: tuple[ProfileImage, ...]
    total: int
    mode: ProfileMode
    method: str
    cost_usd: float
    note: str | None


class _ProfilePlan:
    """How each position's request is made in the chosen mode, and the sentence that says so."""

    def __init__(
        self,
        project: Project,
        character_name: str,
        mode: ProfileMode,
        engines: StageEngines,
        size: RenderSize,
    ) -> None:
        self.spec = character_spec(project, character_name)
        self.mode, self.size = mode, size
        self.base: Asset | None = None
        self.base_bytes = b""
        self.identity_engine: ImageProvider | None = None
        if mode == "consistent":
            self.base = require_picked_base(project, character_name)
            self.base_bytes = project.blobs.get(self.base.sha256)
            self.identity_engine = engines.first_with(Capability.IDENTITY_REFERENCE, nsfw=False)

    def uses_identity_engine(self, nsfw: bool) -> bool:
        """An NSFW character's work, and NSFW positions, only go to a self-hosted identity engine."""
        engine = self.identity_engine
        return engine is not None and (engine.allows_nsfw or not (nsfw or self.spec.nsfw_allowed))

    def method(self, nsfw: bool = False) -> str:
        if self.mode == "fast":
            return "fast: text-to-image from the spec"
        if self.uses_identity_engine(nsfw):
            assert self.identity_engine is not None
            return f"consistent: identity reference on {self.identity_engine.id}"
        return (
            f"consistent: image-to-image of the picked base at strength {CONSISTENT_STRENGTH} "
            "(no engine with identity reference is configured for this work)"
        )

    def request(self, position: ProfilePosition, attempt: int) -> GenerationRequest:
        common: dict[str, Any] = {
            "prompt": self.spec.prompt(position.prompt),
            "negative": NEGATIVE,
            "seed": derive_seed(self.spec.fingerprint(), "profile", self.mode, position.id, attempt),
            "nsfw": position.nsfw,
        }
        if self.mode == "fast":
            return TextToImage(**common, **self.size.request_fields())
        if self.uses_identity_engine(position.nsfw):
            return IdentityReference(references=(self.base_bytes,), **common, **self.size.request_fields())
        return ImageToImage(
            image=self.base_bytes,
            strength=CONSISTENT_STRENGTH,
            **common,
            **self.size.edit_fields(CONSISTENT_STRENGTH),
        )


def _position(positions: tuple[ProfilePosition, ...], position_id: str) -> ProfilePosition:
    for position in positions:
        if position.id == position_id:
            return position
    known = ", ".join(p.id for p in positions)
    raise InvalidInput(f"no profile position {position_id!r} for this character (positions: {known})")


def iter_profile_set(
    project: Project,
    character_name: str,
    ctx: JobContext,
    mode: ProfileMode = "fast",
    size: RenderSize | None = None,
    providers: Sequence[ImageProvider] | None = None,
) -> Iterator[ProfileImage]:
    """Submit every position at once and yield each image as it lands (progress total = positions)."""
    engines = StageEngines.for_project(project, providers)
    plan = _ProfilePlan(project, character_name, mode, engines, size or RenderSize())
    positions = profile_positions(plan.spec.nsfw_allowed)
    total = len(positions)
    ctx.progress(0, total, f"profile set: {total} positions")

    def draw(position: ProfilePosition) -> ProfileImage:
        return _draw_position(project, character_name, ctx, plan, engines, position, attempt=0)

    for done, image in enumerate(run_parallel([partial(draw, p) for p in positions], engines.workers), 1):
        ctx.progress(done, total, f"profile {image.position} landed")
        yield image


def generate_profile_set(
    project: Project,
    character_name: str,
    ctx: JobContext,
    mode: ProfileMode = "fast",
    size: RenderSize | None = None,
    providers: Sequence[ImageProvider] | None = None,
    on_image: Callable[[ProfileImage], None] | None = None,
) -> ProfileSetResult:
    """The whole profile set; `on_image` sees each image as it lands."""
    images = []
    for image in iter_profile_set(project, character_name, ctx, mode, size, providers):
        images.append(image)
        if on_image is not None:
            on_image(image)
    order = {p.id: i for i, p in enumerate(PROFILE_POSITIONS)}
    images.sort(key=lambda image: order[image.position])
    return ProfileSetResult(
        images=tuple(images),
        total=len(images),
        mode=mode,
        method=images[0].method if images else "",
        cost_usd=round(sum(i.image.cost_usd for i in images), 6),
        note=next((i.image.note for i in images if i.image.note), None),
    )


def regenerate_position(
    project: Project,
    character_name: str,
    position: str,
    ctx: JobContext,
    mode: ProfileMode = "fast",
    size: RenderSize | None = None,
    providers: Sequence[ImageProvider] | None = None,
    tweak: str = "",
) -> ProfileImage:
    """Draw one position again with a new seed; the new image replaces the old one in the set. `tweak` (seed
    003: "regenerate one position with a prompt tweak") is added to the position's prompt, e.g. "hands in
    pockets"; it is kept on the image (attribute `tweak`)."""
    tweak = " ".join(tweak.split())
    if len(tweak) > 300:
        raise InvalidInput(f"the prompt tweak is {len(tweak)} characters: keep it under 300")
    engines = StageEngines.for_project(project, providers)
    plan = _ProfilePlan(project, character_name, mode, engines, size or RenderSize())
    chosen = _position(profile_positions(plan.spec.nsfw_allowed), position)
    if tweak:
        chosen = chosen.model_copy(update={"prompt": f"{chosen.prompt}, {tweak}"})
    earlier = stage_assets(project, character_name, "profile", position=chosen.id)
    attempt = 1 + max((a.attributes.get("attempt", 0) for a in earlier), default=0)
    ctx.progress(0, 1, f"regenerating {chosen.id}")
    image = _draw_position(project, character_name, ctx, plan, engines, chosen, attempt, tweak)
    ctx.progress(1, 1, f"profile {chosen.id} replaced")
    return image


def _draw_position(
    project: Project,
    character_name: str,
    ctx: JobContext,
    plan: _ProfilePlan,
    engines: StageEngines,
    position: ProfilePosition,
    attempt: int,
    tweak: str = "",
) -> ProfileImage:
    request = plan.request(position, attempt)
    method = plan.method(position.nsfw)
    attributes: dict[str, Any] = {
        "stage": "profile",
        "position": position.id,
        "attempt": attempt,
        "mode": plan.mode,
        "nsfw": position.nsfw,
        "current": True,
    }
    if tweak:
        attributes["tweak"] = tweak
    parents = (plan.base.id,) if plan.base is not None else ()
    image = generate_asset(
        project, character_name, request, AssetKind.GENERATED, attributes, engines, ctx, parents=parents
    )
    for old in stage_assets(project, character_name, "profile", position=position.id, current=True):
        if old.id != image.asset_id:
            update_attributes(project, old.id, current=False, replaced_by=image.asset_id)
    return ProfileImage(position=position.id, nsfw=position.nsfw, mode=plan.mode, method=method, image=image)


__all__ = [
    "BY_FACES",
    "FACES_NOT_MEASURABLE",
    "PROFILE_POSITIONS",
    "BaseImagesResult",
    "ProfileImage",
    "ProfileSetResult",
    "SkinPassResult",
    "generate_base_images",
    "generate_profile_set",
    "iter_profile_set",
    "pick_base",
    "picked_base",
    "profile_positions",
    "regenerate_position",
    "skin_pass",
]
