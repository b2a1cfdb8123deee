"""Characters: create (optionally from a wizard spec), list, get, delete — only the caller's own."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response, status
from sqlalchemy import func, select

from flenwheel.characters import create_character, delete_character
from flenwheel.jobs.base import JobStatus
from flenwheel.store.models import Asset, Character, FlywheelRound, Job
from flenwheel.web.deps import CurrentUser, OwnedCharacter, ProjectDep, SessionDep
from flenwheel.web.schemas import CharacterCreate, CharacterPage, CharacterPublic, FlywheelRoundPublic

router = APIRouter(prefix="/characters", tags=["characters"])

UNFINISHED = [JobStatus.QUEUED.value, JobStatus.RUNNING.value]


def _public(character: Character, assets: int) -> CharacterPublic:
    return CharacterPublic.model_validate({**_columns(character), "assets": assets})


def _columns(character: Character) -> dict[str, Any]:
    return {column.key: getattr(character, column.key) for column in Character.__table__.columns}


def _create_fields(body: CharacterCreate) -> dict[str, Any]:
    """Token, class word and NSFW flag: as given, else derived from the spec (pipeline/spec.py)."""
    from flenwheel.errors import InvalidInput
    from flenwheel.pipeline.spec import parse_spec

    if body.spec is None:
        if body.token is None or body.class_word is None:
            raise InvalidInput(
                "give `token` and `class_word` (e.g. ohwx_lisa, woman), or a `spec` to derive them from"
            )
        return {"token": body.token, "class_word": body.class_word, "nsfw": bool(body.nsfw), "spec": None}
    if body.spec.get("name", body.name) != body.name:
        raise InvalidInput(
            f"spec.name {body.spec['name']!r} differs from name {body.name!r}: leave `name` out of the spec"
        )
    spec = parse_spec({**body.spec, "name": body.name}, "spec")
    return {
        "token": body.token or spec.resolved_token,
        "class_word": body.class_word or spec.resolved_class,
        "nsfw": spec.nsfw_allowed if body.nsfw is None else body.nsfw,
        "spec": spec.model_dump(mode="json"),
    }


@router.post(
    "", summary="Create a character", status_code=status.HTTP_201_CREATED, response_model=CharacterPublic
)
def create(body: CharacterCreate, user: CurrentUser, project: ProjectDep) -> CharacterPublic:
    """Create a character owned by you. Give `token` and `class_word`, or a wizard `spec` to derive them."""
    fields = _create_fields(body)
    create_character(
        project,
        body.name,
        fields["token"],
        fields["class_word"],
        nsfw=fields["nsfw"],
        budget_usd=body.budget_usd,
        caption_template=body.caption_template,
        owner_id=user.id,
        spec=fields["spec"],
    )
    with project.db.session() as session:
        character = session.scalars(
            select(Character).where(Character.name == body.name, Character.owner_id == user.id)
        ).one()
        return _public(character, 0)


@router.get("", summary="List your characters", response_model=CharacterPage)
def list_characters(
    user: CurrentUser,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> CharacterPage:
    """Your characters, oldest first, with their asset counts."""
    mine = Character.owner_id == user.id
    total = session.scalar(select(func.count()).select_from(Character).where(mine)) or 0
    rows = session.execute(
        select(Character, func.count(Asset.id))
        .outerjoin(Asset, Asset.character_id == Character.id)
        .where(mine)
        .group_by(Character.id)
        .order_by(Character.id)
        .limit(limit)
        .offset(offset)
    ).all()
    items = [_public(character, count) for character, count in rows]
    return CharacterPage(items=items, total=total, limit=limit, offset=offset)


@router.get("/{character_id}", summary="Get a character", response_model=CharacterPublic)
def get(ref: OwnedCharacter, session: SessionDep) -> CharacterPublic:
    """One of your characters."""
    character = session.get_one(Character, ref.id)
    count = session.scalar(select(func.count(Asset.id)).where(Asset.character_id == ref.id)) or 0
    return _public(character, count)


@router.get(
    "/{character_id}/flywheel",
    summary="List the character's flywheel rounds",
    response_model=list[FlywheelRoundPublic],
)
def flywheel_rounds(ref: OwnedCharacter, session: SessionDep) -> list[FlywheelRoundPublic]:
    """Every round of flywheel 1, oldest first, with its record (run rounds with the `flywheel` job kind)."""
    rows = session.scalars(
        select(FlywheelRound).where(FlywheelRound.character_id == ref.id).order_by(FlywheelRound.number)
    )
    return [FlywheelRoundPublic.model_validate(row) for row in rows]


@router.delete(
    "/{character_id}",
    summary="Delete a character",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
)
def remove(ref: OwnedCharacter, project: ProjectDep) -> Response:
    """Delete a character with its assets, reviews, dataset versions, runs and finished jobs, and its files:
    the sheet, training folders, evaluation reports and the image blobs no other asset uses.

    Refused (409) while one of its jobs is queued or running: cancel those first."""
    with project.db.session() as session:  # committed before the 204 goes out
        unfinished = list(
            session.scalars(select(Job.id).where(Job.character_id == ref.id, Job.status.in_(UNFINISHED)))
        )
        if unfinished:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                detail=f"character {ref.id} has unfinished jobs {unfinished}: cancel them with "
                "POST /jobs/{id}/cancel and delete again once they have stopped",
            )
    delete_character(project, ref.id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
