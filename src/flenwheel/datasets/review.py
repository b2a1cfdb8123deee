"""Human review: the user's label (good / needs_correction / reject, with a reason) and caption edits."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from flenwheel.captions import check_caption
from flenwheel.domain import TRAINING_LABELS, USER_LABELS, ReviewSource
from flenwheel.errors import AssetNotFound, InvalidInput
from flenwheel.store.models import Asset, Review
from flenwheel.store.project import Project, get_character


def find_asset(session: Session, character_id: int, character_name: str, ref: str) -> Asset:
    """An asset by id, by sha256 prefix (6+ hex digits) or by its original file name (or path) when unique."""
    ref = ref.strip()
    query = select(Asset).where(Asset.character_id == character_id)
    candidates: list[Asset] = []
    if ref.isdigit():
        candidates = list(session.scalars(query.where(Asset.id == int(ref))))
    if not candidates and len(ref) >= 6 and all(c in "0123456789abcdef" for c in ref.lower()):
        candidates = list(session.scalars(query.where(Asset.sha256.startswith(ref.lower()))))
    if not candidates:
        candidates = list(session.scalars(query.where(Asset.source_name == ref)))
    if not candidates and "/" not in ref:  # `1.jpg` names `lisa/1.jpg` when only one asset has that name
        candidates = list(session.scalars(query.where(Asset.source_name.endswith("/" + ref))))
    if len(candidates) > 1:
        ids = ", ".join(str(asset.id) for asset in candidates)
        raise InvalidInput(f"{ref!r} matches several assets ({ids}): give the asset id instead")
    if not candidates:
        raise AssetNotFound(ref, character_name)
    return candidates[0]


def review_asset(project: Project, character_name: str, ref: str, label: str, reason: str = "") -> Review:
    parsed = next((item for item in USER_LABELS if item.value == label), None)
    if parsed is None:  # needs_review is the gate's: a user decides good, needs_correction or reject
        allowed = ", ".join(item.value for item in USER_LABELS)
        raise InvalidInput(f"unknown label {label!r}: use one of {allowed}") from None
    if parsed not in TRAINING_LABELS and not reason.strip():
        raise InvalidInput(
            f"say why with --reason when labelling {parsed.value} (seed 001: reasons are documented)"
        )
    with project.db.session() as session:
        character = get_character(session, character_name)
        asset = find_asset(session, character.id, character_name, ref)
        review = Review(asset_id=asset.id, label=parsed, reason=reason.strip(), source=ReviewSource.USER)
        session.add(review)
        session.flush()
        return review


def undo_review(project: Project, character_name: str, ref: str) -> Review | None:
    """Withdraw the asset's newest user label (undo): the label before it — the user's previous one, else
    curate's suggestion — is current again. Returns the withdrawn review; raises InvalidInput when the user
    has not labelled the asset. Curate's suggestions are never withdrawn."""
    with project.db.session() as session:
        character = get_character(session, character_name)
        asset = find_asset(session, character.id, character_name, ref)
        newest = session.scalar(
            select(Review)
            .where(Review.asset_id == asset.id, Review.source == ReviewSource.USER.value)
            .order_by(Review.id.desc())
            .limit(1)
        )
        if newest is None:
            raise InvalidInput(f"asset {asset.id} has no label of yours to undo")
        session.delete(newest)
        session.flush()
        return newest


def set_caption(project: Project, character_name: str, ref: str, caption: str) -> str:
    with project.db.session() as session:
        character = get_character(session, character_name)
        asset = find_asset(session, character.id, character_name, ref)
        asset.caption = check_caption(caption, character.token)
        asset.caption_edited = True
        return asset.caption


def set_reference(project: Project, character_name: str, ref: str, on: bool) -> int:
    """Mark (or with `on=False` unmark) an asset as one of the photos that define the character; its id."""
    with project.db.session() as session:
        character = get_character(session, character_name)
        asset = find_asset(session, character.id, character_name, ref)
        asset.is_reference = on
        return asset.id
