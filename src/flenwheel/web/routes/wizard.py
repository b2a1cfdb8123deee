"""The wizard's quick calls: pick the base image or an anchor, edit the character sheet, ask which mode the
studio draws in (identity reference until a LoRA is active, LoRA after) and why, and activate or deactivate
a LoRA as the user. Drawing is a job (POST /jobs with kind base_images, profile_set, sheet, studio_generate, …)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, status
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from flenwheel.domain import Frozen
from flenwheel.pipeline.jobs import JobSize
from flenwheel.pipeline.sheet import DEFAULT_ANCHORS, DEFAULT_VARIATIONS, Anchor, SheetConfig, Variation
from flenwheel.store.project import Project
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
    config: SheetEdit  # the sheet's fields


class ModePublic(Frozen):
    mode: str
    reason: str  # which mode and why: who activated the LoRA, or why none is active
    checkpoint_id: int | None
    strength: float | None


class ActivateBody(Frozen):
    checkpoint_id: int = Field(ge=1, le=2**31 - 1)
    strength: float | None = Field(
        default=None,
        gt=0.0,
        le=4.0,
        description="LoRA strength; default: the evaluation's strength if it recommended this checkpoint, "
        "else 1.0",
    )


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


@router.get("/sheet", summary="The character sheet")
async def get_sheet(ref: OwnedCharacter, project: ProjectDep) -> dict[str, Any]:
    """The character's sheet as stored (the defaults until it is edited)."""
    from flenwheel.pipeline.sheet import load_sheet_config

    config = await run_in_threadpool(load_sheet_config, project, ref.key)
    return config.model_dump(mode="json")


@router.put("/sheet", summary="Edit the character sheet")
async def put_sheet(ref: OwnedCharacter, body: SheetBody, project: ProjectDep) -> dict[str, Any]:
    """Replace the character's sheet (anchors, variations, strengths, image size); checked before saving
    (a bad field is a 422 naming it). Stored in the database, so every worker reads it."""
    from flenwheel.pipeline.sheet import save_sheet_config

    config = await run_in_threadpool(save_sheet_config, project, ref.key, body.config)
    return config.model_dump(mode="json")


@router.get("/mode", summary="The studio's mode", response_model=ModePublic)
async def mode(ref: OwnedCharacter, project: ProjectDep) -> ModePublic:
    """identity_reference until a LoRA is active, lora after — activated by the user (POST …/activate) or
    by an evaluation that measured it good enough; `reason` says which, or why none is active."""
    return await run_in_threadpool(_mode, project, ref.key)


@router.post("/activate", summary="Activate a LoRA checkpoint", response_model=ModePublic)
async def activate(ref: OwnedCharacter, body: ActivateBody, project: ProjectDep) -> ModePublic:
    """Make one of the character's checkpoints its active LoRA, as your decision; the studio then draws in
    LoRA mode. A checkpoint that is not this character's answers 404."""
    from flenwheel.pipeline.activation import activate as activate_checkpoint

    await run_in_threadpool(_own_checkpoint, project, ref.id, body.checkpoint_id)
    await run_in_threadpool(activate_checkpoint, project, ref.key, body.checkpoint_id, body.strength)
    return await run_in_threadpool(_mode, project, ref.key)


@router.delete("/activate", summary="Deactivate the LoRA", response_model=ModePublic)
async def deactivate(ref: OwnedCharacter, project: ProjectDep) -> ModePublic:
    """Turn the active LoRA off: the studio draws in identity-reference mode until one is activated."""
    from flenwheel.pipeline.activation import deactivate as deactivate_lora

    await run_in_threadpool(deactivate_lora, project, ref.key)
    return await run_in_threadpool(_mode, project, ref.key)


def _mode(project: Project, name: str) -> ModePublic:
    from flenwheel.pipeline.studio import decide_mode

    decision = decide_mode(project, name)
    return ModePublic(
        mode=decision.mode,
        reason=decision.reason,
        checkpoint_id=decision.checkpoint_id,
        strength=decision.strength,
    )


def _own_checkpoint(project: Project, character_id: int, checkpoint_id: int) -> None:
    """404 unless the checkpoint belongs to a run of this character (another user's is answered the same)."""
    from sqlalchemy import select

    from flenwheel.store.models import Checkpoint, TrainingRun

    with project.db.session() as session:
        found = session.scalar(
            select(Checkpoint.id)
            .join(TrainingRun, TrainingRun.id == Checkpoint.run_id)
            .where(Checkpoint.id == checkpoint_id, TrainingRun.character_id == character_id)
        )
    if found is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail=f"Character {character_id} has no checkpoint {checkpoint_id}: use the id of one of its "
            "training runs' checkpoints (`flenwheel evaluate` and the evaluation report list them).",
        )
