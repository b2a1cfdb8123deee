"""Reviews: label an asset good / pristine / needs_correction / reject (with a reason), read its label history, edit its
caption — the same rules as `flenwheel review` and `flenwheel caption` (datasets/review.py)."""

from __future__ import annotations

from fastapi import APIRouter, status
from sqlalchemy import select

from flenwheel.datasets.review import review_asset, set_caption
from flenwheel.domain import TRAINING_LABELS
from flenwheel.errors import InvalidInput
from flenwheel.store.models import Review
from flenwheel.web.deps import OwnedAsset, ProjectDep, SessionDep
from flenwheel.web.routes.assets import get_asset
from flenwheel.web.schemas import AssetPublic, CaptionUpdate, ReviewCreate, ReviewPublic

router = APIRouter(prefix="/assets/{asset_id}", tags=["reviews"])


@router.post(
    "/reviews", summary="Label an asset", status_code=status.HTTP_201_CREATED, response_model=ReviewPublic
)
def add_review(ref: OwnedAsset, body: ReviewCreate, project: ProjectDep) -> ReviewPublic:
    """Label the asset. A reason is required for needs_correction and reject; your label always wins over
    curate's suggestion, and the newest of yours is the current one."""
    if body.label not in TRAINING_LABELS and not body.reason.strip():
        raise InvalidInput(
            f"give a `reason` when labelling {body.label.value}: say what is wrong with the image "
            "(seed 001: every label but good is documented)"
        )
    review = review_asset(project, ref.character.key, str(ref.id), body.label.value, body.reason)
    return ReviewPublic.model_validate(review)


@router.delete("/reviews/latest", summary="Undo your newest label", response_model=AssetPublic)
def undo_review(ref: OwnedAsset, project: ProjectDep) -> AssetPublic:
    """Withdraw your newest label of the asset (the review screen's undo): the label before it is current
    again — your previous one, else curate's suggestion. 400 when you have not labelled it."""
    from flenwheel.datasets.review import undo_review as undo

    undo(project, ref.character.key, str(ref.id))
    with project.db.session() as session:
        return get_asset(ref, session)


@router.get("/reviews", summary="List an asset's labels", response_model=list[ReviewPublic])
def list_reviews(ref: OwnedAsset, session: SessionDep) -> list[ReviewPublic]:
    """Every label the asset was given, oldest first (curate's suggestions and yours)."""
    rows = session.scalars(select(Review).where(Review.asset_id == ref.id).order_by(Review.id))
    return [ReviewPublic.model_validate(row) for row in rows]


@router.put("/caption", summary="Set an asset's caption", response_model=AssetPublic)
def update_caption(ref: OwnedAsset, body: CaptionUpdate, project: ProjectDep) -> AssetPublic:
    """Replace the asset's training caption; it must contain the character's trigger token."""
    set_caption(project, ref.character.key, str(ref.id), body.caption)
    with project.db.session() as session:
        return get_asset(ref, session)
