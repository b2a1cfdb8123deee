"""Dependencies every route shares: the project, a database session, the job backend, the caller (from
`Authorization: Bearer <token>`), and the caller's own characters and assets. Anything that belongs to
another user is answered exactly like something that does not exist: 404."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from flenwheel.domain import Frozen
from flenwheel.jobs.base import JobBackend
from flenwheel.store.models import Asset, Character
from flenwheel.store.project import Project
from flenwheel.web.auth import UserInfo, user_for_token
from flenwheel.web.session import COOKIE, CSRF_HEADER, SAFE_METHODS, SessionProblem, csrf_ok, read_session

HOW_TO_GET_A_TOKEN = (
    "send `Authorization: Bearer <token>`; a token is made with `flenwheel user add NAME` "
    "on the machine that holds the project (it is printed once)"
)

MAX_ID = 2**31 - 1  # ids are 32-bit integers on PostgreSQL; a larger one names nothing (and must not crash)
IdPath = Path(ge=1, le=MAX_ID)

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="An API token from `flenwheel user add NAME`, sent as `Authorization: Bearer <token>`.",
)


def get_project(request: Request) -> Project:
    project: Project = request.app.state.project
    return project


ProjectDep = Annotated[Project, Depends(get_project)]


def get_session(project: ProjectDep) -> Iterator[Session]:
    with project.db.session() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_jobs(request: Request) -> JobBackend:
    """The job backend: the server's embedded pool, or Procrastinate; `.store` reads the job table."""
    backend: JobBackend = request.app.state.jobs
    return backend


JobsDep = Annotated[JobBackend, Depends(get_jobs)]


def current_user(
    request: Request,
    project: ProjectDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> UserInfo:
    """The caller: from `Authorization: Bearer <token>`, else from the web app's session cookie (web/session.py),
    where a request that changes anything must also carry the session's CSRF token (X-CSRF-Token)."""
    if (credentials is None or not credentials.credentials) and request.cookies.get(COOKIE):
        return _session_user(request, project)
    if credentials is None or not credentials.credentials:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail=f"No API token: {HOW_TO_GET_A_TOKEN}.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    with project.db.session() as session:
        user = user_for_token(session, credentials.credentials)
    if user is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail=f"This API token is not known (it may have been replaced): {HOW_TO_GET_A_TOKEN}.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if user.revoked_at is not None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="This API token's user has been revoked: ask the server's operator "
            "(`flenwheel user token NAME` gives a revoked user a new token).",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return user


CurrentUser = Annotated[UserInfo, Depends(current_user)]


def _session_user(request: Request, project: Project) -> UserInfo:
    try:
        session = read_session(project, request.cookies.get(COOKIE))
    except SessionProblem as problem:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail=problem.message) from None
    if request.method not in SAFE_METHODS and not csrf_ok(session, request.headers.get(CSRF_HEADER)):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail=f"missing or wrong {CSRF_HEADER} header: a request made with the web app's session must "
            "carry the CSRF token of its page (reload the page)",
        )
    return session.user


class CharacterRef(Frozen):
    """One of the caller's characters, by id and name (the pipeline functions take the name)."""

    id: int
    name: str

    @property
    def key(self) -> str:
        """How the pipeline and job payloads name this character unambiguously (names are unique per owner
        only): `#ID`."""
        return f"#{self.id}"


def character_not_found(character_id: int) -> HTTPException:
    return HTTPException(
        status.HTTP_404_NOT_FOUND,
        detail=f"You have no character {character_id}: list yours with GET /characters.",
    )


def find_owned_character(project: Project, user: UserInfo, character_id: int) -> CharacterRef:
    with project.db.session() as session:
        row = session.execute(
            select(Character.id, Character.name).where(
                Character.id == character_id, Character.owner_id == user.id
            )
        ).first()
    if row is None:
        raise character_not_found(character_id)
    return CharacterRef(id=row.id, name=row.name)


def owned_character(
    project: ProjectDep, user: CurrentUser, character_id: Annotated[int, IdPath]
) -> CharacterRef:
    return find_owned_character(project, user, character_id)


OwnedCharacter = Annotated[CharacterRef, Depends(owned_character)]


class AssetRef(Frozen):
    """One of the caller's assets, with its character."""

    id: int
    sha256: str
    format: str
    character: CharacterRef


def owned_asset(project: ProjectDep, user: CurrentUser, asset_id: Annotated[int, IdPath]) -> AssetRef:
    with project.db.session() as session:
        row = session.execute(
            select(Asset.id, Asset.sha256, Asset.format, Character.id, Character.name)
            .join(Character, Character.id == Asset.character_id)
            .where(Asset.id == asset_id, Character.owner_id == user.id)
        ).first()
    if row is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail=f"You have no asset {asset_id}: list a character's assets with GET /characters/{{id}}/assets.",
        )
    return AssetRef(id=row[0], sha256=row[1], format=row[2], character=CharacterRef(id=row[3], name=row[4]))


OwnedAsset = Annotated[AssetRef, Depends(owned_asset)]
