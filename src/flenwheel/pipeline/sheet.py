"""The character sheet (seed 004): anchor poses, then variations edited from their anchor.

Phase 1 draws K candidates per anchor (image-to-image from the picked base, else text-to-image); the pick
is the user's (`pick_anchor`) or automatic by identity (face distance to the base) and quality. Phase 2
edits each variation from its anchor at its strength; a face that drifted from the character is redrawn
with a new seed up to a limit, then reported. The poses and variations live in an editable YAML file,
`<project>/characters/<name>/sheet.yaml`, written with the defaults below when missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationError, model_validator

from flenwheel.domain import AssetKind, Frozen
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
from flenwheel.providers.base import Capability, GenerationRequest, ImageProvider, ImageToImage, TextToImage
from flenwheel.store.models import Asset
from flenwheel.store.project import Project, get_character

SHEET_FILE = "sheet.yaml"
Identifier = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")


class Anchor(Frozen):
    """A base pose; `keywords` let the studio find the anchor nearest a prompt."""

    id: str = Identifier
    prompt: str = Field(min_length=1, max_length=400)
    keywords: tuple[str, ...] = ()


class Variation(Frozen):
    """A pose edited from its anchor; seed 004: the lowest strength that reaches the pose keeps the face."""

    id: str = Identifier
    anchor: str
    prompt: str = Field(min_length=1, max_length=400)
    strength: float = Field(default=0.5, ge=0.05, le=0.95)


DEFAULT_ANCHORS: tuple[Anchor, ...] = (
    Anchor(
        id="front", prompt="standing, facing the camera, full body", keywords=("front", "facing", "standing")
    ),
    Anchor(id="back", prompt="standing, seen from behind, full body", keywords=("back", "behind", "rear")),
    Anchor(id="side", prompt="standing, side profile view, full body", keywords=("side", "profile", "squat")),
    Anchor(
        id="three_quarter",
        prompt="standing, three-quarter view, full body",
        keywords=("three-quarter", "quarter", "angle", "lunge"),
    ),
    Anchor(
        id="arms_up", prompt="standing, both arms raised overhead", keywords=("arms up", "overhead", "raised")
    ),
    Anchor(
        id="bent_over", prompt="bending forward at the hips", keywords=("bent", "bending", "leaning forward")
    ),
    Anchor(
        id="seated", prompt="seated on a chair, full body", keywords=("seated", "sitting", "sits", "chair")
    ),
    Anchor(id="hanging", prompt="hanging from a bar with both hands", keywords=("hanging", "bar", "pull-up")),
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
    image: RenderSize = RenderSize()
    anchors: tuple[Anchor, ...] = Field(default=DEFAULT_ANCHORS, min_length=1)
    variations: tuple[Variation, ...] = DEFAULT_VARIATIONS

    @model_validator(mode="after")
    def _consistent(self) -> SheetConfig:
        anchor_ids = [a.id for a in self.anchors]
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


def sheet_path(project: Project, character_name: str) -> Path:
    """The character's sheet.yaml, in its folder named by id: a later character of the same name (another
    user's, or after a delete) never reads it."""
    from flenwheel.store.project import character_dir

    with project.db.session() as session:
        character_id = get_character(session, character_name).id
    return character_dir(project, character_id) / SHEET_FILE


def load_sheet_config(project: Project, character_name: str) -> SheetConfig:
    """The character's sheet.yaml, written with the defaults first when it does not exist yet."""
    import yaml

    with project.db.session() as session:
        get_character(session, character_name)  # a clear error for an unknown character
    path = sheet_path(project, character_name)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        header = (
            "# The character sheet (seed 004): edit poses, variations and strengths, then run it again.\n"
        )
        path.write_text(header + yaml.safe_dump(SheetConfig().model_dump(mode="json"), sort_keys=False))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InvalidInput(f"cannot read {path}: {exc}") from None
    try:
        return SheetConfig.model_validate(data or {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise InvalidInput(f"{path}: {problems} — fix the file or delete it to get the defaults") from None


# -- phase 1: anchors --------------------------------------------------------------------------------------
class AnchorCandidate(Frozen):
    anchor: str
    candidate: int
    image: StageImage
    identity: IdentityCheck
    quality: float


class AnchorPick(Frozen):
    anchor: str
    asset_id: int
    by: Literal["user", "auto"]
    reason: str


class AnchorsResult(Frozen):
    candidates: tuple[AnchorCandidate, ...]
    picks: tuple[AnchorPick, ...]
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
    base_bytes = project.blobs.get(base.sha256) if from_base and base is not None else b""
    method = (
        f"image-to-image from the picked base (asset {base.id}) at strength {config.anchor_strength}"
        if from_base and base is not None
        else "text-to-image from the spec (no picked base, or no engine can edit images)"
    )
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
        update_attributes(project, image.asset_id, identity=check.status, identity_distance=check.distance)
        progress.step(f"anchor {anchor.id} candidate {k + 1}: {check.reason}")
        return AnchorCandidate(
            anchor=anchor.id,
            candidate=k,
            image=image,
            identity=check,
            quality=round(probe.quality_score(image.asset_id), 4),
        )

    tasks = [partial(draw, anchor.id, k) for anchor, k in jobs]
    candidates = sorted(run_parallel(tasks, engines.workers), key=lambda c: (c.anchor, c.candidate))
    picks = auto_pick_anchors(project, character_name, config, candidates) if pick_auto else ()
    return AnchorsResult(
        candidates=tuple(candidates),
        picks=picks,
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
        candidates = _stored_candidates(project, character_name)
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
        measured = [c for c in own if c.identity.distance is not None]
        if measured:
            best = min(
                measured, key=lambda c: (c.identity.status != "passed", c.identity.distance, -c.quality)
            )
            reason = f"closest face to the base (distance {best.identity.distance}), quality {best.quality}"
            if best.identity.status != "passed":
                reason += f" — but above the identity threshold {best.identity.threshold}: check it by eye"
        else:
            best = max(own, key=lambda c: (c.quality, -c.candidate))
            reason = f"best quality score {best.quality}; identity {NOT_MEASURABLE} (no face found)"
        picks.append(_mark_pick(project, character_name, anchor.id, best.image.asset_id, "auto", reason))
    return tuple(picks)


def _stored_candidates(project: Project, character_name: str) -> list[AnchorCandidate]:
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
        found.append(
            AnchorCandidate(
                anchor=asset.attributes["anchor"],
                candidate=asset.attributes["candidate"],
                image=image,
                identity=identity_check(reference, probe.embedding(asset.id), threshold),
                quality=round(probe.quality_score(asset.id), 4),
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


def _variation_request(
    spec: CharacterSpec, variation: Variation, anchor_bytes: bytes, size: RenderSize, attempt: int
) -> GenerationRequest:
    return ImageToImage(
        prompt=spec.prompt(variation.prompt),
        negative=NEGATIVE,
        image=anchor_bytes,
        strength=variation.strength,
        seed=derive_seed(spec.fingerprint(), "variation", variation.id, attempt),
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
    config_file: str


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
    return SheetResult(
        anchors=anchors, variations=variations, config_file=str(sheet_path(project, character_name))
    )
