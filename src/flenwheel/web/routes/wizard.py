"""The wizard's quick calls: pick the base image or an anchor, edit the character sheet, and ask which
mode the studio draws in (identity reference until a LoRA is active, LoRA after). Drawing is a job
(POST /jobs with kind base_images, profile_set, sheet, studio_generate, …)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from flenwheel.domain import Frozen
from flenwheel.pipeline.jobs import JobSize
from flenwheel.pipeline.sheet import DEFAULT_ANCHORS, DEFAULT_VARIATIONS, Anchor, SheetConfig, Variation
from flenwheel.web.deps import OwnedCharacter, ProjectDep

router = APIRouter(prefix="/characters/{character_id}", tags=["characters"])


class PickBody(Frozen):
    asset_id: int = Field(ge=1, le=2**31 - 1)


class AnchorPickBody(PickBody):
    anchor: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$", examples=["front"])


class SheetEdit(SheetConfig):
    """The sheet as an API user may set it: pipeline/sheet.py SheetConfig with the image size and steps
    bounded like every job's (JobSize) and at most 16 anchors and 64 variations."""

    image: JobSize = JobSize()  # type: ignore[assignment]
    anchors: tuple[Anchor, ...] = Field(default=DEFAULT_ANCHORS, min_length=1, max_length=16)
    variations: tuple[Variation, ...] = Field(default=DEFAULT_VARIATIONS, max_length=64)


class SheetBody(Frozen):
    config: SheetEdit  # the sheet.yaml fields


class ModePublic(Frozen):
    mode: str
    reason: str
    checkpoint_id: int | None
    strength: float | None


@router.post("/pick-base", summary="Pick the base image")
async def pick_base(ref: OwnedCharacter, body: PickBody, project: ProjectDep) -> dict[str, Any]:
    """Make one of the character's base images the pick; the sheet and consistent profiles draw from it."""
    from flenwheel.pipeline.wizard import pick_base as pick

    picked = await run_in_threadpool(pick, project, ref.key, body.asset_id)
    return {"picked": picked.asset_id}


@router.post("/anchors/pick", summary="Pick an anchor candidate")
async def pick_anchor(ref: OwnedCharacter, body: AnchorPickBody, project: ProjectDep) -> dict[str, Any]:
    """The user's pick of one anchor's candidate (`anchor` is its id in the sheet); an automatic pick
    never overrules it."""
    from flenwheel.pipeline.sheet import pick_anchor as pick

    picked = await run_in_threadpool(pick, project, ref.key, body.anchor, body.asset_id)
    return picked.model_dump(mode="json")


@router.put("/sheet", summary="Edit the character sheet")
async def put_sheet(ref: OwnedCharacter, body: SheetBody, project: ProjectDep) -> dict[str, Any]:
    """Replace the character's sheet (anchors, variations, strengths, image size); checked before saving
    (a bad field is a 422 naming it)."""
    import yaml

    from flenwheel.pipeline.sheet import sheet_path

    config = SheetConfig.model_validate(body.config.model_dump())
    path = sheet_path(project, ref.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
    return config.model_dump(mode="json")


@router.get("/mode", summary="The studio's mode", response_model=ModePublic)
async def mode(ref: OwnedCharacter, project: ProjectDep) -> ModePublic:
    """identity_reference until a LoRA is active, lora after (switched by the chain's activate stage)."""
    from flenwheel.pipeline.studio import decide_mode
    from flenwheel.store.models import Character

    decision = await run_in_threadpool(decide_mode, project, ref.key)
    with project.db.session() as session:
        character = session.get_one(Character, ref.id)
        checkpoint, strength = character.active_checkpoint_id, character.active_lora_strength
    return ModePublic(mode=decision.mode, reason=decision.reason, checkpoint_id=checkpoint, strength=strength)
