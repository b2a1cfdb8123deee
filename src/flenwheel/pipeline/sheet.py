"""The character sheet (seed 004): anchor poses, then variations edited from their anchor.

Phase 1 draws K candidates per anchor (image-to-image from the picked base, else text-to-image); each is
checked for identity (face distance to the base) and for its body pose (a candidate not in the anchor's pose
is flagged as pose drift); the pick is the user's (`pick_anchor`) or automatic: a candidate in the pose,
then by identity and quality. Phase 2
edits each variation from its anchor at its strength; a face that drifted from the character is redrawn
with a new seed up to a limit, then reported. The poses and variations are the character's sheet, kept in
the store (`character.sheet`, so a worker on any host reads it): the defaults below until the user edits it
(`PUT /characters/{id}/sheet`, `flenwheel sheet-config NAME FILE`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationError, model_validator
from sqlalchemy import select, update

from flenwheel.domain import Arms, AssetKind, Facing, Frozen, Posture
from flenwheel.errors import InvalidInput
from flenwheel.jobs.base import JobContext
from flenwheel.pipeline.spec import NEGATIVE, CharacterSpec, character_spec
from flenwheel.pipeline.stage import (
    NOT_MEASURABLE,
    FaceProbe,
    GatedEdit,
    IdentityCheck,
    RenderSize,
    StageEngines,
    StageImage,
    StageProgress,
    derive_seed,
    existing_stage_image,
    gated_edit,
    generate_asset,
    identity_check,
    picked_base,
    run_parallel,
    stage_assets,
    update_attributes,
)
from flenwheel.poses.skeleton import SKELETONS, render_skeleton
from flenwheel.poses.target import PoseCheck, PoseTarget
from flenwheel.providers.base import (
    Capability,
    ControlImage,
    ControlType,
    GenerationRequest,
    ImageProvider,
    ImageToImage,
    TextToImage,
)
from flenwheel.store.models import Asset, Character
from flenwheel.store.project import Project, get_character

SHEET_FILE = "sheet.yaml"  # where releases before migration 0007 kept the sheet: imported on first read
Identifier = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")


class Anchor(Frozen):
    """A base pose; `keywords` let the studio find the anchor nearest a prompt; `pose` is the body pose a
    candidate must show (measured with MediaPipe Pose: a candidate showing another pose is flagged as pose
    drift and picked only when no candidate shows the pose)."""

    id: str = Identifier
    prompt: str = Field(min_length=1, max_length=400)
    keywords: tuple[str, ...] = ()
    pose: PoseTarget | None = None
    # the OpenPose skeleton (poses/skeleton.py) sent as a pose control image where an engine takes one
    skeleton: str | None = None


class Variation(Frozen):
    """A pose edited from its anchor; seed 004: the lowest strength that reaches the pose keeps the face."""

    id: str = Identifier
    anchor: str
    prompt: str = Field(min_length=1, max_length=400)
    strength: float = Field(default=0.5, ge=0.05, le=0.95)


STANDING = Posture.STANDING
# Seed 004's eight anchors; each with the body pose it must show (poses/target.py).
DEFAULT_ANCHORS: tuple[Anchor, ...] = (
    Anchor(
        id="front",
        skeleton="front",
        prompt="standing, facing the camera, full body",
        keywords=("front", "facing", "standing"),
        pose=PoseTarget(posture=STANDING, facing=(Facing.FRONT,)),
    ),
    Anchor(
        id="back",
        skeleton="back",
        prompt="standing, seen from behind, full body",
        keywords=("back", "behind", "rear"),
        pose=PoseTarget(posture=STANDING, facing=(Facing.BACK,)),
    ),
    Anchor(
        id="side",
        skeleton="side",
        prompt="standing, side profile view, full body",
        keywords=("side", "profile", "squat"),
        pose=PoseTarget(posture=STANDING, facing=(Facing.SIDE,)),
    ),
    Anchor(
        id="three_quarter",
        skeleton="three_quarter",
        prompt="standing, three-quarter view, full body",
        keywords=("three-quarter", "quarter", "angle", "lunge"),
        pose=PoseTarget(posture=STANDING, facing=(Facing.THREE_QUARTER,)),
    ),
    Anchor(
        id="arms_up",
        skeleton="arms_up",
        prompt="standing, both arms raised overhead",
        keywords=("arms up", "overhead", "raised"),
        pose=PoseTarget(posture=STANDING, arms=Arms.UP),
    ),
    Anchor(
        id="bent_over",
        skeleton="bent_over",
        prompt="bending forward at the hips",
        keywords=("bent", "bending", "leaning forward"),
        pose=PoseTarget(posture=Posture.BENT_OVER),
    ),
    Anchor(
        id="seated",
        skeleton="seated",
        prompt="seated on a chair, full body",
        keywords=("seated", "sitting", "sits", "chair"),
        pose=PoseTarget(posture=Posture.SITTING),
    ),
    Anchor(
        id="hanging",
        skeleton="hanging",
        prompt="hanging from a bar with both hands",
        keywords=("hanging", "bar", "pull-up"),
        pose=PoseTarget(arms=Arms.UP),
    ),
)

DEFAULT_VARIATIONS: tuple[Variation, ...] = (
    Variation(id="front_smile", anchor="front", prompt="smiling, same pose", strength=0.35),
    Variation(id="front_hands_on_hips", anchor="front", prompt="hands on hips", strength=0.45),
    Variation(id="back_over_shoulder", anchor="back", prompt="looking back over the shoulder", strength=0.5),
    Variation(id="side_walking", anchor="side", prompt="walking, mid-stride", strength=0.55),
    Variation(id="quarter_leaning", anchor="three_quarter", prompt="leaning against a wall", strength=0.5),
    Variation(id="arms_up_stretch", anchor="arms_up", prompt="stretching, eyes closed", strength=0.4),
    Variation(id="bent_tying_shoes", anchor="bent_over", prompt="tying shoelaces", strength=0.5),
    Variation(
        id="seated_legs_crossed", anchor="seated", prompt="legs crossed, hands on the knee", strength=0.4
    ),
    Variation(id="seated_reading", anchor="seated", prompt="reading a book", strength=0.5),
    Variation(id="hanging_pull_up", anchor="hanging", prompt="pull-up, chin above the bar", strength=0.5),
)


class SheetConfig(Frozen):
    """The editable sheet of one character."""

    candidates: int = Field(default=4, ge=1, le=10)  # K per anchor
    anchor_strength: float = Field(default=0.65, ge=0.05, le=0.95)  # image-to-image from the picked base
    identity_retries: int = Field(default=2, ge=0, le=10)  # redraws of a drifted variation
    # ControlNet strength of an anchor's skeleton; 0 draws anchors from the prompt alone
    pose_control: float = Field(default=0.8, ge=0.0, le=2.0)
    image: RenderSize = RenderSize()
    anchors: tuple[Anchor, ...] = Field(default=DEFAULT_ANCHORS, min_length=1)
    variations: tuple[Variation, ...] = DEFAULT_VARIATIONS

    @model_validator(mode="after")
    def _consistent(self) -> SheetConfig:
        anchor_ids = [a.id for a in self.anchors]
        for anchor in self.anchors:
            if anchor.skeleton is not None and anchor.skeleton not in SKELETONS:
                raise ValueError(
                    f"anchor {anchor.id!r} names skeleton {anchor.skeleton!r}; known: {', '.join(sorted(SKELETONS))}"
                )
        for kind, ids in (("anchor", anchor_ids), ("variation", [v.id for v in self.variations])):
            duplicates = sorted({i for i in ids if ids.count(i) > 1})
            if duplicates:
                raise ValueError(f"{kind} ids must be unique: {', '.join(duplicates)} appear twice")
        for variation in self.variations:
            if variation.anchor not in anchor_ids:
                raise ValueError(
                    f"variation {variation.id!r} names anchor {variation.anchor!r}, which is not one of "
                    f"{', '.join(anchor_ids)}"
                )
        return self

    def anchor(self, anchor_id: str) -> Anchor:
        for anchor in self.anchors:
            if anchor.id == anchor_id:
                return anchor
        raise InvalidInput(
            f"no anchor {anchor_id!r} in the sheet (anchors: {', '.join(a.id for a in self.anchors)})"
        )


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" if e["loc"] else e["msg"] for e in exc.errors()
    )


def sheet_yaml(config: SheetConfig) -> str:
    """The sheet as the YAML a user edits and gives back to `flenwheel sheet-config NAME FILE`."""
    import yaml

    header = "# The character sheet (seed 004): edit poses, variations and strengths, then store it again.\n"
    return header + yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def parse_sheet_yaml(text: str, source: str) -> SheetConfig:
    """A sheet from YAML text; InvalidInput naming `source` and every bad field."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{source} is not YAML: {exc}") from None
    if data is not None and not isinstance(data, dict):
        raise InvalidInput(f"{source}: a sheet is a mapping (candidates, image, anchors, variations …)")
    try:
        return SheetConfig.model_validate(data or {})
    except ValidationError as exc:
        raise InvalidInput(f"{source}: {_problems(exc)}") from None


def load_sheet_config(project: Project, character_name: str) -> SheetConfig:
    """The character's sheet from the store — the defaults when it was never edited.

    A `characters/<id>/sheet.yaml` an earlier release wrote is imported into the store on the first read by
    the host that has it, and renamed `sheet.yaml.imported` (nothing is lost; editing it no longer does
    anything). Raises CharacterNotFound, or InvalidInput when that file (or a stored sheet an older release
    accepted) breaks today's rules — saying what to fix.
    """
    with project.db.session() as session:
        character = get_character(session, character_name)
        character_id, stored = character.id, character.sheet
    if stored is None:
        _import_sheet_file(project, character_id)
        with project.db.session() as session:
            stored = session.scalar(select(Character.sheet).where(Character.id == character_id))
        if stored is None:
            return SheetConfig()
    try:
        return SheetConfig.model_validate(stored)
    except ValidationError as exc:
        raise InvalidInput(
            f"the stored sheet of {character_name!r}: {_problems(exc)} — store a fixed one with "
            f"`flenwheel sheet-config {character_name} FILE` or PUT /characters/{character_id}/sheet"
        ) from None


def save_sheet_config(project: Project, character_name: str, config: SheetConfig) -> SheetConfig:
    """Store the character's sheet (replacing the stored one, or a legacy sheet.yaml not yet imported)."""
    config = SheetConfig.model_validate(config.model_dump())  # a subclass (the API's) stores as the base
    with project.db.session() as session:
        character = get_character(session, character_name)
        character.sheet = config.model_dump(mode="json")
        character_id = character.id
    _retire_sheet_file(project, character_id)
    return config


def _legacy_sheet_file(project: Project, character_id: int) -> Path:
    from flenwheel.store.project import character_dir

    return character_dir(project, character_id) / SHEET_FILE


def _import_sheet_file(project: Project, character_id: int) -> None:
    """Move a legacy sheet.yaml into the store, unless a sheet was stored meanwhile (that one wins)."""
    path = _legacy_sheet_file(project, character_id)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read {path}: {exc}") from None
    config = parse_sheet_yaml(text, f"{path} (imported into the store on first read)")
    with project.db.session() as session:
        session.execute(
            update(Character)
            .where(Character.id == character_id, Character.sheet.is_(None))
            .values(sheet=config.model_dump(mode="json"))
        )
    _retire_sheet_file(project, character_id)


def _retire_sheet_file(project: Project, character_id: int) -> None:
    path = _legacy_sheet_file(project, character_id)
    with contextlib.suppress(FileNotFoundError):  # another reader retired it first
        path.replace(path.with_name(SHEET_FILE + ".imported"))


# -- phase 1: anchors --------------------------------------------------------------------------------------
class AnchorCandidate(Frozen):
    anchor: str
    candidate: int
    image: StageImage
    identity: IdentityCheck
    quality: float
    pose: PoseCheck | None = None  # None when the anchor asks for no pose

    @property
    def pose_drifted(self) -> bool:
        return self.pose is not None and self.pose.status == "drifted"


class AnchorPick(Frozen):
    anchor: str
    asset_id: int
    by: Literal["user", "auto"]
    reason: str


class AnchorsResult(Frozen):
    candidates: tuple[AnchorCandidate, ...]
    picks: tuple[AnchorPick, ...]
    pose_drifted: int = 0  # candidates whose measured body pose is not the anchor's
    method: str  # image-to-image from the picked base, or text-to-image from the spec
    reused: int  # candidates an earlier, interrupted run had already stored
    cost_usd: float
    note: str | None


def _reference(
    project: Project, character_name: str, probe: FaceProbe
) -> tuple[Asset | None, np.ndarray | None]:
    base = picked_base(project, character_name)
    return base, probe.embedding(base.id) if base is not None else None


def generate_anchors(
    project: Project,
    character_name: str,
    ctx: JobContext,
    pick_auto: bool = True,
    config: SheetConfig | None = None,
    size: RenderSize | None = None,
    providers: Sequence[ImageProvider] | None = None,
) -> AnchorsResult:
    """Phase 1: K candidates for every anchor, submitted together; picked automatically when asked."""
    config = config or load_sheet_config(project, character_name)
    size = size or config.image
    spec = character_spec(project, character_name)
    engines = StageEngines.for_project(project, providers)
    probe = FaceProbe(project)
    base, reference = _reference(project, character_name, probe)
    nsfw = spec.nsfw_allowed
    from_base = base is not None and engines.first_with(Capability.IMAGE_TO_IMAGE, nsfw) is not None
    kind = Capability.IMAGE_TO_IMAGE if from_base else Capability.TEXT_TO_IMAGE
    steered = config.pose_control > 0 and any(
        {kind, Capability.CONTROLNET} <= p.capabilities and (p.allows_nsfw or not nsfw)
        for p in engines.providers
    )
    base_bytes = project.blobs.get(base.sha256) if from_base and base is not None else b""
    method = (
        f"image-to-image from the picked base (asset {base.id}) at strength {config.anchor_strength}"
        if from_base and base is not None
        else "text-to-image from the spec (no picked base, or no engine can edit images)"
    )
    if steered:
        method += f", steered by each anchor's pose skeleton (ControlNet strength {config.pose_control})"
    jobs = [(anchor, k) for anchor in config.anchors for k in range(config.candidates)]
    progress = StageProgress(ctx, len(jobs), "anchors")
    reused = 0

    def draw(anchor_id: str, k: int) -> AnchorCandidate:
        nonlocal reused
        anchor = config.anchor(anchor_id)
        # drawn from this base (or from text): a new pick of the base draws new anchors
        source = base.id if from_base and base is not None else None
        attributes = {"stage": "anchor", "anchor": anchor.id, "candidate": k, "base_asset": source}
        image = existing_stage_image(
            project, character_name, "anchor", anchor=anchor.id, candidate=k, base_asset=source
        )
        if image is not None:
            reused += 1
        else:
            seed = derive_seed(spec.fingerprint(), "anchor", anchor.id, k)
            common: dict[str, Any] = {
                "prompt": spec.prompt(anchor.prompt),
                "negative": NEGATIVE,
                "seed": seed,
            }
            if steered and anchor.skeleton is not None:
                common["control"] = ControlImage(
                    image=render_skeleton(anchor.skeleton, size.width, size.height),
                    type=ControlType.POSE,
                    strength=config.pose_control,
                )
                attributes["pose_control"] = anchor.skeleton
            request: GenerationRequest
            if from_base and base is not None:
                request = ImageToImage(
                    image=base_bytes,
                    strength=config.anchor_strength,
                    **common,
                    **size.edit_fields(config.anchor_strength),
                )
            else:
                request = TextToImage(**common, **size.request_fields())
            parents = (base.id,) if from_base and base is not None else ()
            attributes["picked"] = False
            image = generate_asset(
                project, character_name, request, AssetKind.ANCHOR, attributes, engines, ctx, parents=parents
            )
        check = identity_check(
            reference, probe.embedding(image.asset_id), project.settings.identity_threshold
        )
        pose = probe.pose_check(image.asset_id, anchor.pose) if anchor.pose is not None else None
        update_attributes(
            project,
            image.asset_id,
            identity=check.status,
            identity_distance=check.distance,
            **({"pose": pose.status, "pose_reason": pose.reason} if pose is not None else {}),
        )
        pose_note = f"; {pose.reason}" if pose is not None else ""
        progress.step(f"anchor {anchor.id} candidate {k + 1}: {check.reason}{pose_note}")
        return AnchorCandidate(
            anchor=anchor.id,
            candidate=k,
            image=image,
            identity=check,
            quality=round(probe.quality_score(image.asset_id), 4),
            pose=pose,
        )

    tasks = [partial(draw, anchor.id, k) for anchor, k in jobs]
    candidates = sorted(run_parallel(tasks, engines.workers), key=lambda c: (c.anchor, c.candidate))
    picks = auto_pick_anchors(project, character_name, config, candidates) if pick_auto else ()
    return AnchorsResult(
        candidates=tuple(candidates),
        picks=picks,
        pose_drifted=sum(c.pose_drifted for c in candidates),
        method=method,
        reused=reused,
        cost_usd=round(sum(c.image.cost_usd for c in candidates), 6),
        note=next((c.image.note for c in candidates if c.image.note), None),
    )


def auto_pick_anchors(
    project: Project,
    character_name: str,
    config: SheetConfig | None = None,
    candidates: Sequence[AnchorCandidate] | None = None,
) -> tuple[AnchorPick, ...]:
    """Per anchor: the candidate closest to the base's face (quality breaks ties); when no face can be
    measured, the best quality score — and the reason says which rule decided."""
    config = config or load_sheet_config(project, character_name)
    if candidates is None:
        candidates = _stored_candidates(project, character_name, config)
    picks = []
    for anchor in config.anchors:
        own = [c for c in candidates if c.anchor == anchor.id]
        if not own:
            continue
        users = stage_assets(project, character_name, "anchor", anchor=anchor.id, picked=True, pick="user")
        if users:  # the user's own pick is never overruled
            picks.append(
                AnchorPick(anchor=anchor.id, asset_id=users[-1].id, by="user", reason="picked by the user")
            )
            continue
        # a candidate in the anchor's pose wins over one that drifted from it, whatever its face
        in_pose = [c for c in own if not c.pose_drifted] or own
        measured = [c for c in in_pose if c.identity.distance is not None]
        if measured:
            best = min(
                measured, key=lambda c: (c.identity.status != "passed", c.identity.distance, -c.quality)
            )
            reason = f"closest face to the base (distance {best.identity.distance}), quality {best.quality}"
            if best.identity.status != "passed":
                reason += f" — but above the identity threshold {best.identity.threshold}: check it by eye"
        else:
            best = max(in_pose, key=lambda c: (c.quality, -c.candidate))
            reason = f"best quality score {best.quality}; identity {NOT_MEASURABLE} (no face found)"
        if best.pose is not None:
            reason += f"; {best.pose.reason}"
            if best.pose_drifted:
                reason += " — every candidate drifted from the pose: draw again or pick by eye"
        picks.append(_mark_pick(project, character_name, anchor.id, best.image.asset_id, "auto", reason))
    return tuple(picks)


def _stored_candidates(project: Project, character_name: str, config: SheetConfig) -> list[AnchorCandidate]:
    probe = FaceProbe(project)
    threshold = project.settings.identity_threshold
    _, reference = _reference(project, character_name, probe)
    found = []
    for asset in stage_assets(project, character_name, "anchor"):
        image = existing_stage_image(
            project,
            character_name,
            "anchor",
            anchor=asset.attributes["anchor"],
            candidate=asset.attributes["candidate"],
        )
        assert image is not None
        target = next((a.pose for a in config.anchors if a.id == asset.attributes["anchor"]), None)
        found.append(
            AnchorCandidate(
                anchor=asset.attributes["anchor"],
                candidate=asset.attributes["candidate"],
                image=image,
                identity=identity_check(reference, probe.embedding(asset.id), threshold),
                quality=round(probe.quality_score(asset.id), 4),
                pose=probe.pose_check(asset.id, target) if target is not None else None,
            )
        )
    return found


def pick_anchor(project: Project, character_name: str, anchor: str, asset_id: int) -> AnchorPick:
    """The user's pick for one anchor pose (replaces an automatic one)."""
    own = {a.id for a in stage_assets(project, character_name, "anchor", anchor=anchor)}
    if asset_id not in own:
        raise InvalidInput(
            f"asset {asset_id} is not a candidate of anchor {anchor!r} for {character_name!r} "
            f"(candidates: {', '.join(map(str, sorted(own))) or 'none yet — run the sheet first'})"
        )
    return _mark_pick(project, character_name, anchor, asset_id, "user", "picked by the user")


def _mark_pick(
    project: Project,
    character_name: str,
    anchor: str,
    asset_id: int,
    by: Literal["user", "auto"],
    reason: str,
) -> AnchorPick:
    for other in stage_assets(project, character_name, "anchor", anchor=anchor, picked=True):
        update_attributes(project, other.id, picked=False)
    update_attributes(project, asset_id, picked=True, pick=by, pick_reason=reason)
    return AnchorPick(anchor=anchor, asset_id=asset_id, by=by, reason=reason)


def picked_anchors(project: Project, character_name: str) -> dict[str, Asset]:
    """Anchor id → its picked image."""
    return {a.attributes["anchor"]: a for a in stage_assets(project, character_name, "anchor", picked=True)}


# -- phase 2: variations -----------------------------------------------------------------------------------
class VariationOutcome(Frozen):
    variation: str
    anchor: str
    status: Literal["passed", "drifted", "not measurable", "skipped"]
    reason: str
    attempts: int = 0
    image: StageImage | None = None
    identity: IdentityCheck | None = None


class VariationsResult(Frozen):
    outcomes: tuple[VariationOutcome, ...]
    passed: int
    drifted: int
    not_measurable: int
    skipped: int
    cost_usd: float
    note: str | None


def generate_variations(
    project: Project,
    character_name: str,
    ctx: JobContext,
    config: SheetConfig | None = None,
    size: RenderSize | None = None,
    providers: Sequence[ImageProvider] | None = None,
) -> VariationsResult:
    """Phase 2: each variation edits its picked anchor at its strength, behind the identity gate."""
    config = config or load_sheet_config(project, character_name)
    size = size or config.image
    spec = character_spec(project, character_name)
    engines = StageEngines.for_project(project, providers)
    probe = FaceProbe(project)
    _, base_face = _reference(project, character_name, probe)
    anchors = picked_anchors(project, character_name)
    ready = [v for v in config.variations if v.anchor in anchors]
    skipped = [
        VariationOutcome(
            variation=v.id,
            anchor=v.anchor,
            status="skipped",
            reason=f"anchor {v.anchor!r} has no pick yet: pick one (pick_anchor, or `flenwheel sheet NAME --pick-auto`)",
        )
        for v in config.variations
        if v.anchor not in anchors
    ]
    progress = StageProgress(ctx, len(ready), "variations")

    def draw(variation: Variation) -> VariationOutcome:
        anchor = anchors[variation.anchor]
        reference = base_face if base_face is not None else probe.embedding(anchor.id)
        edit = gated_edit(
            project,
            character_name,
            ctx,
            engines,
            probe,
            progress,
            partial(_variation_request, spec, variation, project.blobs.get(anchor.sha256), size),
            AssetKind.VARIATION,
            {
                "stage": "variation",
                "variation": variation.id,
                "anchor": variation.anchor,
                "anchor_asset": anchor.id,
            },
            anchor.id,
            reference,
            config.identity_retries,
        )
        return _outcome(variation, edit)

    done = list(run_parallel([partial(draw, v) for v in ready], engines.workers))
    order = {v.id: i for i, v in enumerate(config.variations)}
    outcomes = sorted([*done, *skipped], key=lambda o: order[o.variation])
    return VariationsResult(
        outcomes=tuple(outcomes),
        passed=sum(o.status == "passed" for o in outcomes),
        drifted=sum(o.status == "drifted" for o in outcomes),
        not_measurable=sum(o.status == NOT_MEASURABLE for o in outcomes),
        skipped=len(skipped),
        cost_usd=round(sum(o.image.cost_usd for o in outcomes if o.image), 6),
        note=next((o.image.note for o in outcomes if o.image and o.image.note), None),
    )


def redraw_variation(
    project: Project,
    character_name: str,
    variation_id: str,
    ctx: JobContext,
    size: RenderSize | None = None,
    providers: Sequence[ImageProvider] | None = None,
) -> VariationOutcome:
    """Draw one variation again from its picked anchor with new seeds (seed 004's "redraw one"), behind the same
    identity gate; earlier drawings stay on record (attribute `redraw` numbers them). Raises InvalidInput for an
    unknown variation or one whose anchor has no pick yet."""
    config = load_sheet_config(project, character_name)
    found = [v for v in config.variations if v.id == variation_id]
    if not found:
        known = ", ".join(v.id for v in config.variations) or "none"
        raise InvalidInput(f"no variation {variation_id!r} in the sheet (variations: {known})")
    variation = found[0]
    anchor = picked_anchors(project, character_name).get(variation.anchor)
    if anchor is None:
        raise InvalidInput(
            f"variation {variation.id!r} is drawn from anchor {variation.anchor!r}, which has no pick yet: pick one"
        )
    earlier = stage_assets(project, character_name, "variation", variation=variation.id)
    redraw = 1 + max((int(a.attributes.get("redraw", 0)) for a in earlier), default=0)
    spec = character_spec(project, character_name)
    engines = StageEngines.for_project(project, providers)
    probe = FaceProbe(project)
    _, base_face = _reference(project, character_name, probe)
    edit = gated_edit(
        project,
        character_name,
        ctx,
        engines,
        probe,
        StageProgress(ctx, 1, "variation"),
        partial(
            _variation_request,
            spec,
            variation,
            project.blobs.get(anchor.sha256),
            size or config.image,
            redraw=redraw,
        ),
        AssetKind.VARIATION,
        {
            "stage": "variation",
            "variation": variation.id,
            "anchor": variation.anchor,
            "anchor_asset": anchor.id,
            "redraw": redraw,
        },
        anchor.id,
        base_face if base_face is not None else probe.embedding(anchor.id),
        config.identity_retries,
    )
    return _outcome(variation, edit)


def _variation_request(
    spec: CharacterSpec,
    variation: Variation,
    anchor_bytes: bytes,
    size: RenderSize,
    attempt: int,
    redraw: int = 0,
) -> GenerationRequest:
    key = (variation.id, attempt) if redraw == 0 else (variation.id, f"redraw{redraw}", attempt)
    return ImageToImage(
        prompt=spec.prompt(variation.prompt),
        negative=NEGATIVE,
        image=anchor_bytes,
        strength=variation.strength,
        seed=derive_seed(spec.fingerprint(), "variation", *key),
        **size.edit_fields(variation.strength),
    )


def _outcome(variation: Variation, edit: GatedEdit) -> VariationOutcome:
    if edit.status == "drifted":
        reason = (
            f"{edit.identity.reason} after {edit.attempts} attempts (the limit): left out, kept for review"
        )
    elif edit.status == NOT_MEASURABLE:
        reason = f"identity {edit.identity.reason}: kept, flagged — not counted as passed"
    else:
        reason = edit.identity.reason + (f" on attempt {edit.attempts}" if edit.attempts > 1 else "")
    return VariationOutcome(
        variation=variation.id,
        anchor=variation.anchor,
        status=edit.status,
        reason=reason,
        attempts=edit.attempts,
        image=edit.image,
        identity=edit.identity,
    )


class SheetResult(Frozen):
    anchors: AnchorsResult
    variations: VariationsResult


def run_sheet(
    project: Project,
    character_name: str,
    ctx: JobContext,
    pick_auto: bool = True,
    size: RenderSize | None = None,
    providers: Sequence[ImageProvider] | None = None,
) -> SheetResult:
    """Both phases. Without `pick_auto`, variations wait for the user's anchor picks (they are skipped and
    say so); running again after picking reuses the stored anchors and draws only what is missing."""
    config = load_sheet_config(project, character_name)
    anchors = generate_anchors(project, character_name, ctx, pick_auto, config, size, providers)
    variations = generate_variations(project, character_name, ctx, config, size, providers)
    return SheetResult(anchors=anchors, variations=variations)
