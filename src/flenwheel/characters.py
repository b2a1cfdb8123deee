"""Characters: create and list them, with their trigger token and class word validated at the edge."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from flenwheel.captions import validate_template
from flenwheel.domain import CLASS_PATTERN, NAME_PATTERN, TOKEN_PATTERN
from flenwheel.errors import CharacterExists, InvalidInput
from flenwheel.store.models import Asset, Character
from flenwheel.store.project import Project


@dataclass(frozen=True)
class CharacterInfo:
    name: str
    token: str
    class_word: str
    nsfw: bool
    budget_usd: float
    assets: int


def create_character(
    project: Project,
    name: str,
    token: str,
    class_word: str,
    nsfw: bool = False,
    budget_usd: float = 5.0,
    caption_template: str | None = None,
    owner_id: int | None = None,
    spec: dict[str, Any] | None = None,
) -> CharacterInfo:
    if not NAME_PATTERN.match(name):
        raise InvalidInput(
            f"character name {name!r} is not allowed: use letters, digits, '_', '-', '.', spaces (≤ 64)"
        )
    if not TOKEN_PATTERN.match(token):
        raise InvalidInput(
            f"trigger token {token!r} is not allowed: one word of letters, digits, '_' or '-' (e.g. ohwx_char)"
        )
    class_word = " ".join(class_word.split())
    if not CLASS_PATTERN.match(class_word):
        raise InvalidInput(
            f"class word {class_word!r} is not allowed: a plain word such as person, woman, man"
        )
    if not 0 <= budget_usd <= 10_000:
        raise InvalidInput(f"budget {budget_usd} is out of range: give dollars between 0 and 10000")
    if caption_template is not None:
        validate_template(caption_template)
    with project.db.session() as session:
        # Names are unique per owner only: another user's names never show through this error.
        same_owner = Character.owner_id.is_(None) if owner_id is None else Character.owner_id == owner_id
        if session.scalar(select(Character.id).where(Character.name == name, same_owner)) is not None:
            raise CharacterExists(name)
        session.add(
            Character(
                name=name,
                token=token,
                class_word=class_word,
                nsfw=nsfw,
                budget_usd=budget_usd,
                caption_template=caption_template,
                owner_id=owner_id,
                spec=dict(spec or {}),
            )
        )
        try:
            session.flush()
        except IntegrityError:
            raise CharacterExists(name) from None
    return CharacterInfo(name, token, class_word, nsfw, budget_usd, 0)


def list_characters(project: Project) -> list[CharacterInfo]:
    with project.db.session() as session:
        rows = session.execute(
            select(Character, func.count(Asset.id))
            .outerjoin(Asset, Asset.character_id == Character.id)
            .group_by(Character.id)
            .order_by(Character.name)
        ).all()
        return [
            CharacterInfo(c.name, c.token, c.class_word, c.nsfw, c.budget_usd, count) for c, count in rows
        ]


def delete_character(project: Project, character_id: int) -> None:
    """Delete a character with everything that is only its own: rows (assets, reviews, dataset versions,
    runs and jobs cascade), its folders (the sheet, training runs) and the blobs no other asset uses. A
    later character, of any user, that gets the same name starts with nothing of this one's."""
    import shutil

    from flenwheel.store.models import Evaluation, TrainingRun
    from flenwheel.store.project import character_files

    with project.db.session() as session:
        own = set(session.scalars(select(Asset.sha256).where(Asset.character_id == character_id)))
        reports = list(
            session.scalars(
                select(Evaluation.report_path)
                .join(TrainingRun, TrainingRun.id == Evaluation.run_id)
                .where(TrainingRun.character_id == character_id, Evaluation.report_path.is_not(None))
            )
        )
        session.execute(delete(Character).where(Character.id == character_id))
        shared = set(session.scalars(select(Asset.sha256).where(Asset.sha256.in_(own)))) if own else set()
    for folder in character_files(project, character_id):
        shutil.rmtree(folder, ignore_errors=True)
    for sha256 in sorted(own - shared):
        project.blobs.delete(sha256)
    for report in reports:
        if report:
            (project.root / report).unlink(missing_ok=True)
