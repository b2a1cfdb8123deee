"""The studio (seed 000 steps 5–6, seed 003 §3–5): generate, inpaint, upscale and regenerate for a character.

Generation runs in identity-reference mode until the character has an active LoRA checkpoint, then in LoRA
mode — activated by the user, or by an evaluation that measured it good enough (pipeline/activation.py) — and
every result says which mode ran and why. Where no engine with an
identity adapter (PuLID, IP-Adapter FaceID, InstantID) is configured, identity-reference mode edits the
anchor nearest the prompt (else the picked base) at a low strength — seed 004's method — and says so.
Every request is recorded on its assets (`attributes.recipe`) so `regenerate` can repeat it with a new seed.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import TypeAdapter

from flenwheel.domain import AssetKind, Frozen
from flenwheel.errors import InvalidInput
from flenwheel.jobs.base import JobContext, LocalJobContext
from flenwheel.pipeline.activation import mode_reason
from flenwheel.pipeline.generation import GenerationOutcome, run_generation
from flenwheel.pipeline.likeness import check_identity
from flenwheel.pipeline.stage import (
    SEED_MASK,
    IdentityCheck,
    RenderSize,
    StageEngines,
    check_cancelled,
    picked_base,
    stage_assets,
)
from flenwheel.providers.base import (
    Capability,
    GenerationRequest,
    IdentityReference,
    ImageProvider,
    ImageToImage,
    Inpaint,
    LoraRef,
    TextToImage,
    Upscale,
)
from flenwheel.store.models import Asset, Checkpoint
from flenwheel.store.project import Project, get_character

TIERS = {"draft": (512, 12), "hq": (1024, 30)}  # long side in px, steps
ANCHOR_EDIT_STRENGTH = 0.55  # seed 004: a moderate pose change from the nearest anchor keeps the face
Mode = Literal["auto", "text", "identity_reference", "lora"]
RanMode = Literal["text", "identity_reference", "lora"]
IDENTITY_ADAPTERS = "PuLID, IP-Adapter FaceID, InstantID"
_REQUEST = TypeAdapter(GenerationRequest)


def size_for(aspect: str, tier: str) -> tuple[int, int, int]:
    """Width, height (multiples of 64) and steps for an aspect ratio like 9:16 and a tier."""
    if tier not in TIERS:
        raise InvalidInput(f"unknown tier {tier!r}: use draft or hq")
    match = re.fullmatch(r"\s*(\d{1,3})\s*:\s*(\d{1,3})\s*", aspect)
    if not match or int(match.group(1)) == 0 or int(match.group(2)) == 0:
        raise InvalidInput(f"aspect {aspect!r} is not like 1:1, 9:16 or 3:2")
    w, h = int(match.group(1)), int(match.group(2))
    if max(w, h) / min(w, h) > 4:
        raise InvalidInput(f"aspect {aspect} is more extreme than 4:1")
    long_side, steps = TIERS[tier]
    scale = long_side / max(w, h)
    return max(64, int(w * scale / 64 + 0.5) * 64), max(64, int(h * scale / 64 + 0.5) * 64), steps


class StudioOutput(Frozen):
    asset_id: int
    sha256: str
    seed: int | None
    width: int
    height: int
    file: str
    provider: str
    model: str
    cost_usd: float
    nsfw_score: float | None


class StudioResult(Frozen):
    """What the studio made, and in which mode and why."""

    outputs: tuple[StudioOutput, ...]
    mode: RanMode
    mode_reason: str
    method: str  # how the face was kept: identity reference, LoRA, an anchor edit, or plain text
    provider: str
    model: str
    cost_usd: float
    nsfw_routing: bool
    note: str | None
    # What the identity check said of each output, in order (`not measurable` when either side has no face).
    identity: tuple[IdentityCheck, ...] = ()


# -- mode -------------------------------------------------------------------------------------------------
class ModeDecision(Frozen):
    """The mode the studio draws in, and why in words (who activated the LoRA, or why none is active)."""

    mode: RanMode
    reason: str
    lora: LoraRef | None = None
    checkpoint_id: int | None = None  # the active LoRA's checkpoint, when one is active
    strength: float | None = None


def decide_mode(project: Project, character_name: str, mode: Mode = "auto") -> ModeDecision:
    """LoRA mode when a checkpoint is active (and its file is there), else identity-reference mode.

    A checkpoint is active only when the user activated it or an evaluation measured it good enough
    (pipeline/activation.py); the reason says which, or why no LoRA is active."""
    if mode == "text":
        return ModeDecision(mode="text", reason="text mode asked for: no identity conditioning")
    with project.db.session() as session:
        character = get_character(session, character_name)
        checkpoint = (
            session.get(Checkpoint, character.active_checkpoint_id)
            if character.active_checkpoint_id
            else None
        )
        strength = character.active_lora_strength if character.active_lora_strength is not None else 1.0
        why = mode_reason(session, character)
    if checkpoint is not None:
        path = project.root / checkpoint.path
        if path.is_file() and mode in ("auto", "lora"):
            return ModeDecision(
                mode="lora",
                reason=why,
                lora=LoraRef(path=str(path), strength=strength),
                checkpoint_id=checkpoint.id,
                strength=strength,
            )
        if mode == "lora":
            raise InvalidInput(
                f"the active checkpoint's file {path} is missing: train again or activate another with "
                f"`flenwheel activate {character_name} CHECKPOINT`"
            )
        if mode == "auto":
            return ModeDecision(
                mode="identity_reference",
                reason=f"identity_reference: the active checkpoint's file {checkpoint.path} is missing "
                f"({why})",
                checkpoint_id=checkpoint.id,
                strength=strength,
            )
    if mode == "lora":
        raise InvalidInput(
            f"{character_name!r} has no active LoRA ({why}): activate one with `flenwheel activate "
            f"{character_name} CHECKPOINT`, or use mode auto / identity_reference"
        )
    if mode == "identity_reference":
        return ModeDecision(mode="identity_reference", reason=f"identity-reference mode asked for; {why}")
    return ModeDecision(mode="identity_reference", reason=why)


def nearest_anchor(project: Project, character_name: str, prompt: str) -> tuple[Asset | None, str]:
    """The picked anchor whose pose words best match the prompt, else the picked base; and why."""
    from flenwheel.pipeline.sheet import load_sheet_config

    anchors = load_sheet_config(project, character_name).anchors
    picked = {a.attributes["anchor"]: a for a in stage_assets(project, character_name, "anchor", picked=True)}
    text = prompt.lower()
    scored = [
        (sum(_mentions(text, word) for word in (*anchor.keywords, anchor.id.replace("_", " "))), anchor.id)
        for anchor in anchors
        if anchor.id in picked
    ]
    best = max(scored, default=(0, ""))
    if best[0] > 0:
        return picked[best[1]], f"anchor {best[1]!r} (asset {picked[best[1]].id}), nearest the prompt's pose"
    base = picked_base(project, character_name)
    if base is not None:
        return base, f"the picked base (asset {base.id}): no picked anchor matches the prompt's pose"
    if picked:
        first = next(iter(picked.values()))
        return first, f"anchor {first.attributes['anchor']!r} (asset {first.id}): no picked base"
    return None, ""


def _mentions(text: str, phrase: str) -> bool:
    """`phrase` as whole words: "bar" is in "hanging from a bar", not in "barbecue"."""
    return re.search(rf"(?<![\w-]){re.escape(phrase.lower())}(?![\w-])", text) is not None


def _identity_reference_image(project: Project, character_name: str) -> Asset | None:
    base = picked_base(project, character_name)
    if base is not None:
        return base
    with project.db.session() as session:
        character = get_character(session, character_name)
        from sqlalchemy import select

        return session.scalars(
            select(Asset)
            .where(Asset.character_id == character.id, Asset.is_reference.is_(True))
            .order_by(Asset.id)
        ).first()


# -- generate ---------------------------------------------------------------------------------------------
def studio_generate(
    project: Project,
    character_name: str,
    prompt: str,
    model: str | None = None,
    aspect: str = "1:1",
    tier: str = "draft",
    count: int = 1,
    nsfw: bool = False,
    mode: Mode = "auto",
    seed: int | None = None,
    negative: str = "",
    loras: Sequence[LoraRef] = (),
    provider: str | None = None,
    size: RenderSize | None = None,
    providers: Sequence[ImageProvider] | None = None,
    ctx: JobContext | None = None,
) -> StudioResult:
    """Generate 1–10 images of the character in the mode its state allows (`size` overrides aspect/tier)."""
    if not 1 <= count <= 10:
        raise InvalidInput(f"count {count}: give 1 to 10")
    ctx = ctx or LocalJobContext()
    if size is None:  # an engine that knows the model family takes that family's steps for the tier
        width, height, steps = size_for(aspect, tier)
        size = RenderSize.model_validate({"width": width, "height": height, "steps": steps, "tier": tier})
    decision = decide_mode(project, character_name, mode)
    engines = StageEngines.for_project(project, providers)
    seed = _fresh_seed() if seed is None else seed
    with project.db.session() as session:
        character = get_character(session, character_name)
        token, class_word, character_nsfw = character.token, character.class_word, character.nsfw
    common: dict[str, Any] = {
        "prompt": prompt,
        "negative": negative,
        "model": model,
        "seed": seed,
        "count": count,
        "nsfw": nsfw,
        "loras": tuple(loras),
    }
    parents: tuple[int, ...] = ()
    request: GenerationRequest
    if decision.mode == "lora":
        assert decision.lora is not None
        if not re.search(rf"(?<![\w-]){re.escape(token)}(?![\w-])", prompt):
            common["prompt"] = f"{token} {class_word}, {prompt}"
        common["loras"] = (decision.lora, *loras)
        request = TextToImage(**common, **size.request_fields())
        method = f"LoRA {decision.lora.path} at strength {decision.lora.strength}, trigger token {token!r}"
    elif decision.mode == "text":
        request = TextToImage(**common, **size.request_fields())
        method = "plain text-to-image"
    else:
        adapter = engines.first_with(Capability.IDENTITY_REFERENCE, nsfw or character_nsfw)
        reference = _identity_reference_image(project, character_name) if adapter is not None else None
        if adapter is not None and reference is not None:
            request = IdentityReference(
                references=(project.blobs.get(reference.sha256),), **common, **size.request_fields()
            )
            parents = (reference.id,)
            method = f"identity reference on {adapter.id} from asset {reference.id}"
        else:
            source, why = nearest_anchor(project, character_name, prompt)
            if source is not None:
                request = ImageToImage(
                    image=project.blobs.get(source.sha256),
                    strength=ANCHOR_EDIT_STRENGTH,
                    **common,
                    **size.edit_fields(ANCHOR_EDIT_STRENGTH),
                )
                parents = (source.id,)
                method = (
                    f"no engine with an identity adapter ({IDENTITY_ADAPTERS}) is configured: edited {why} "
                    f"at strength {ANCHOR_EDIT_STRENGTH}"
                )
            else:
                request = TextToImage(**common, **size.request_fields())
                method = (
                    "no reference image yet (no picked base, anchor or reference photo): plain text-to-image"
                )
    outcome = _run(
        project,
        character_name,
        request,
        AssetKind.GENERATED,
        parents,
        provider,
        engines,
        ctx,
        decision.mode,
        method,
    )
    result = _result(outcome, decision.mode, decision.reason, method)
    checks = check_identity(project, character_name, [o.asset_id for o in result.outputs])
    return result.model_copy(update={"identity": checks})


# -- edit, inpaint, upscale, regenerate ----------------------------------------------------------------------
def studio_edit(
    project: Project,
    character_name: str,
    image: bytes,
    prompt: str,
    mask: bytes | None = None,
    strength: float = 0.6,
    seed: int | None = None,
    steps: int = 20,
    parents: tuple[int, ...] = (),
    provider: str | None = None,
    providers: Sequence[ImageProvider] | None = None,
    ctx: JobContext | None = None,
    model: str | None = None,
) -> StudioResult:
    """Inpaint under a mask (white is redrawn, black keeps the original pixel for pixel), or image-to-image
    of the whole image at `strength` when no mask is given."""
    from flenwheel.images import decode_image

    seed = _fresh_seed() if seed is None else seed
    decoded = decode_image(image).image
    width, height = max(64, decoded.width // 8 * 8), max(64, decoded.height // 8 * 8)
    if max(width, height) > 2048:
        raise InvalidInput(
            f"the image is {decoded.width}x{decoded.height}; edit images up to 2048 px (downscale first)"
        )
    common: dict[str, Any] = {
        "prompt": prompt,
        "seed": seed,
        "steps": steps,
        "width": width,
        "height": height,
        "strength": strength,
        "model": model,  # an engine's model, or a model family (qwen-image-edit-2509, flux-kontext, …)
    }
    request: GenerationRequest
    if mask is not None:
        decode_image(mask)  # a clear error for a broken mask file
        request = Inpaint(image=image, mask=mask, **common)
        method = "inpaint: only the white part of the mask is redrawn"
    else:
        request = ImageToImage(image=image, **common)
        method = f"image-to-image at strength {strength}"
    engines = StageEngines.for_project(project, providers)
    outcome = _run(
        project,
        character_name,
        request,
        AssetKind.EDITED,
        parents,
        provider,
        engines,
        ctx or LocalJobContext(),
        "text",
        method,
    )
    return _result(outcome, "text", "edit of an existing image", method)


def studio_inpaint(
    project: Project,
    character_name: str,
    image: bytes,
    mask: bytes,
    prompt: str,
    strength: float = 1.0,
    seed: int | None = None,
    steps: int = 20,
    parents: tuple[int, ...] = (),
    provider: str | None = None,
    providers: Sequence[ImageProvider] | None = None,
    ctx: JobContext | None = None,
) -> StudioResult:
    """Redraw only where the mask is white; the rest of the image is kept exactly."""
    return studio_edit(
        project, character_name, image, prompt, mask, strength, seed, steps, parents, provider, providers, ctx
    )


def studio_upscale(
    project: Project,
    character_name: str,
    image: bytes,
    factor: int = 2,
    parents: tuple[int, ...] = (),
    provider: str | None = None,
    providers: Sequence[ImageProvider] | None = None,
    ctx: JobContext | None = None,
) -> StudioResult:
    """Upscale 2× or 4× (Real-ESRGAN on this machine by default)."""
    if factor not in (2, 4):
        raise InvalidInput(f"upscale factor {factor}: use 2 or 4")
    engines = StageEngines.for_project(project, providers)
    request = Upscale(image=image, factor=factor)
    outcome = _run(
        project,
        character_name,
        request,
        AssetKind.UPSCALED,
        parents,
        provider,
        engines,
        ctx or LocalJobContext(),
        "text",
        f"upscale {factor}x",
    )
    return _result(outcome, "text", "upscale of an existing image", f"upscale {factor}x")


def regenerate(
    project: Project,
    character_name: str,
    asset_id: int,
    providers: Sequence[ImageProvider] | None = None,
    ctx: JobContext | None = None,
) -> StudioResult:
    """The same request as a stored studio image, with a new seed; a new asset beside the old one."""
    with project.db.session() as session:
        character = get_character(session, character_name)
        asset = session.get(Asset, asset_id)
        if asset is None or asset.character_id != character.id:
            raise InvalidInput(f"asset {asset_id} is not an image of {character_name!r}")
        recipe = dict((asset.attributes or {}).get("recipe") or {})
        kind, parents = AssetKind(asset.kind), tuple(asset.parents or ())
    if not recipe:
        raise InvalidInput(
            f"asset {asset_id} has no studio recipe (it was not made by the studio): regenerate profile images "
            "with regenerate_position and sheet images by running the sheet again"
        )
    data = dict(recipe["request"])
    for field, key in (("image", "image_sha256"), ("mask", "mask_sha256")):
        if recipe.get(key):
            data[field] = project.blobs.get(recipe[key])
    if recipe.get("reference_sha256s"):
        data["references"] = tuple(project.blobs.get(sha) for sha in recipe["reference_sha256s"])
    if data.get("kind") != "upscale":
        data["seed"] = _fresh_seed()
    request = _REQUEST.validate_python(data)
    engines = StageEngines.for_project(project, providers)
    mode: RanMode = recipe.get("mode", "text")
    method = str(recipe.get("method", "the same request"))
    outcome = _run(
        project,
        character_name,
        request,
        kind,
        parents,
        recipe.get("provider"),
        engines,
        ctx or LocalJobContext(),
        mode,
        method,
    )
    result = _result(outcome, mode, f"regenerated asset {asset_id} with a new seed", method)
    if kind is not AssetKind.GENERATED:
        return result
    checks = check_identity(project, character_name, [o.asset_id for o in result.outputs])
    return result.model_copy(update={"identity": checks})


# -- shared ------------------------------------------------------------------------------------------------
def _fresh_seed() -> int:
    """A random seed that, with up to 10 images counted up from it, fits `asset.seed` (32-bit signed on
    PostgreSQL)."""
    return random.SystemRandom().randrange(SEED_MASK - 16)


def _run(
    project: Project,
    character_name: str,
    request: GenerationRequest,
    kind: AssetKind,
    parents: tuple[int, ...],
    provider: str | None,
    engines: StageEngines,
    ctx: JobContext,
    mode: RanMode,
    method: str,
) -> GenerationOutcome:
    check_cancelled(ctx)
    recipe = _recipe(project, request, mode, provider, method)
    return run_generation(
        project,
        character_name,
        request,
        kind=kind,
        parents=parents,
        preferred=provider,
        providers=engines.providers,
        ctx=ctx.counting_images(),
        attributes={"stage": "studio", "mode": mode, "recipe": recipe},
    )


def _recipe(
    project: Project, request: GenerationRequest, mode: RanMode, provider: str | None, method: str
) -> dict[str, Any]:
    """The request without its image bytes (kept in the blob store by hash) — enough to run it again."""
    recipe: dict[str, Any] = {
        "request": request.model_dump(mode="json", exclude={"image", "mask", "references"}),
        "mode": mode,
        "provider": provider,
        "method": method,
    }
    for field, key in (("image", "image_sha256"), ("mask", "mask_sha256")):
        data = getattr(request, field, None)
        if data:
            recipe[key] = project.blobs.put(data)
    references = getattr(request, "references", ())
    if references:
        recipe["reference_sha256s"] = [project.blobs.put(data) for data in references]
    return recipe


def _result(outcome: GenerationOutcome, mode: RanMode, reason: str, method: str) -> StudioResult:
    return StudioResult(
        outputs=tuple(
            StudioOutput(
                asset_id=o.asset_id,
                sha256=o.sha256,
                seed=o.seed,
                width=o.width,
                height=o.height,
                file=str(o.file),
                provider=o.provider,
                model=o.model,
                cost_usd=o.cost_usd,
                nsfw_score=o.nsfw_score,
            )
            for o in outcome.outputs
        ),
        mode=mode,
        mode_reason=reason,
        method=method,
        provider=outcome.provider,
        model=outcome.model,
        cost_usd=outcome.cost_usd,
        nsfw_routing=outcome.nsfw_routing,
        note=outcome.note,
    )


__all__ = [
    "ANCHOR_EDIT_STRENGTH",
    "TIERS",
    "ModeDecision",
    "StudioOutput",
    "StudioResult",
    "decide_mode",
    "nearest_anchor",
    "regenerate",
    "size_for",
    "studio_edit",
    "studio_generate",
    "studio_inpaint",
    "studio_upscale",
]
