"""API users and their bearer tokens. A token is shown once when made; only its sha256 is stored."""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from flenwheel.domain import Frozen
from flenwheel.errors import FlenwheelError, InvalidInput
from flenwheel.store.models import User
from flenwheel.store.project import Project

USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.@]{0,63}$")


class UserExists(FlenwheelError):
    def __init__(self, name: str) -> None:
        super().__init__(f"an API user named {name!r} already exists: pick another name")


class UserNotFound(FlenwheelError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no API user named {name!r}: list them with `flenwheel user ls`")


class UserInfo(Frozen):
    """An API user as the API and the CLI show it (never the token)."""

    id: int
    name: str
    created_at: datetime
    revoked_at: datetime | None = None
    operator: bool = False  # reads every user's metrics (GET /stats, GET /metrics)

    @classmethod
    def of(cls, user: User) -> UserInfo:
        return cls(
            id=user.id,
            name=user.name,
            created_at=user.created_at,
            revoked_at=user.revoked_at,
            operator=bool(user.operator),
        )


def new_token() -> str:
    """A fresh bearer token: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def add_user(project: Project, name: str, operator: bool = False) -> tuple[UserInfo, str]:
    """Create a user and return it with its token; the token cannot be shown again. An `operator` reads every
    user's metrics (GET /stats, GET /metrics) — nothing else of theirs."""
    if not USER_NAME.match(name):
        raise InvalidInput(
            f"user name {name!r} is not allowed: use letters, digits, '_', '-', '.', '@' (≤ 64, no spaces)"
        )
    token = new_token()
    with project.db.session() as session:
        if session.scalar(select(User.id).where(User.name == name)) is not None:
            raise UserExists(name)
        user = User(name=name, token_sha256=token_sha256(token), operator=operator)
        session.add(user)
        try:
            session.flush()
        except IntegrityError:
            raise UserExists(name) from None
        return UserInfo.of(user), token


def new_user_token(project: Project, name: str) -> str:
    """Replace a user's token (the old one stops working at once) and return the new one. A revoked user
    gets access back this way (`flenwheel user token NAME`)."""
    token = new_token()
    with project.db.session() as session:
        user = session.scalar(select(User).where(User.name == name))
        if user is None:
            raise UserNotFound(name)
        user.token_sha256 = token_sha256(token)
        user.revoked_at = None
    return token


def revoke_user(project: Project, name: str) -> UserInfo:
    """Revoke a user: every request with their token answers 401 from now on (also SSE streams they have
    open, at their next poll). Their characters, assets and jobs stay; `flenwheel user token NAME` lets
    them back in with a new token."""
    with project.db.session() as session:
        user = session.scalar(select(User).where(User.name == name))
        if user is None:
            raise UserNotFound(name)
        if user.revoked_at is None:
            user.revoked_at = datetime.now(UTC)
        session.flush()
        return UserInfo.of(user)


def set_operator(project: Project, name: str, operator: bool) -> UserInfo:
    """Make a user an operator (or no longer one): it decides whether GET /stats shows them every
    character's figures and whether GET /metrics answers them."""
    with project.db.session() as session:
        user = session.scalar(select(User).where(User.name == name))
        if user is None:
            raise UserNotFound(name)
        user.operator = operator
        session.flush()
        return UserInfo.of(user)


def list_users(project: Project) -> list[UserInfo]:
    with project.db.session() as session:
        return [UserInfo.of(u) for u in session.scalars(select(User).order_by(User.id))]


def user_for_token(session: Session, token: str) -> UserInfo | None:
    """The user holding `token` (revoked or not: see `revoked_at`), or None. Looked up by hash: the token
    itself is never stored or compared."""
    user = session.scalar(select(User).where(User.token_sha256 == token_sha256(token)))
    return None if user is None else UserInfo.of(user)
