"""Browser sessions for the web app: sign in once with an API token, then an HTTP-only, SameSite=Lax cookie
carries a signed, time-limited session; every form and every state-changing API call from the page carries
the session's CSRF token.

The cookie holds the user id, a fingerprint of the user's current token (so replacing or revoking the token
ends every session made with it) and a random CSRF secret, signed with itsdangerous' timed serializer under a
key kept in the project folder (`web_session.key`, made on first use), so sessions survive a restart and
every server on the same project accepts them. The token itself is never stored in the cookie.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlalchemy import select

from flenwheel.store.models import User
from flenwheel.store.project import Project
from flenwheel.web.auth import UserInfo, token_sha256, user_for_token

COOKIE = "flenwheel_session"
CSRF_FIELD = "csrf"  # the hidden form field
CSRF_HEADER = "X-CSRF-Token"  # the header the page's scripts send with fetch()
SESSION_MAX_AGE_S = 12 * 3600  # a working day; then the user signs in again
KEY_FILE = "web_session.key"
FINGERPRINT_CHARS = 16  # of the token's sha256: enough to notice a replaced token, useless to guess it
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class SessionProblem(Exception):
    """No usable session: `expired` says whether one existed and ran out (the page says so)."""

    def __init__(self, message: str, expired: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.expired = expired


@dataclass(frozen=True)
class WebSession:
    user: UserInfo
    csrf: str


def _key(project: Project) -> str:
    path: Path = project.root / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        candidate = secrets.token_urlsafe(48)
        try:
            with path.open("x", encoding="utf-8") as out:  # another server may make it at the same moment
                out.write(candidate)
            path.chmod(0o600)
        except FileExistsError:
            pass
    return path.read_text(encoding="utf-8").strip()


def _serializer(project: Project) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(_key(project), salt="flenwheel-web-session")


def sign_in(project: Project, token: str) -> tuple[UserInfo, str]:
    """Check an API token and return its user with the cookie value of a new session.

    Raises SessionProblem (with what to do) for an empty, unknown or revoked token."""
    token = token.strip()
    if not token:
        raise SessionProblem("Paste your API token: `flenwheel user add NAME` prints one.")
    with project.db.session() as session:
        user = user_for_token(session, token)
    if user is None:
        raise SessionProblem(
            "That token is not known (it may have been replaced): check it, or make a new one with "
            "`flenwheel user token NAME` on the machine that holds the project."
        )
    if user.revoked_at is not None:
        raise SessionProblem("This user has been revoked: ask the server's operator for a new token.")
    payload = {
        "u": user.id,
        "t": token_sha256(token)[:FINGERPRINT_CHARS],
        "c": secrets.token_urlsafe(24),
    }
    return user, _serializer(project).dumps(payload)


def read_session(project: Project, cookie: str | None) -> WebSession:
    """The session a cookie carries. Raises SessionProblem when there is none, it is forged or damaged, it
    is older than SESSION_MAX_AGE_S (`expired=True`), or its user's token was replaced or revoked."""
    if not cookie:
        raise SessionProblem("Sign in with your API token.")
    try:
        payload = _serializer(project).loads(cookie, max_age=SESSION_MAX_AGE_S)
    except SignatureExpired:
        raise SessionProblem("Your session has expired: sign in again.", expired=True) from None
    except BadSignature:
        raise SessionProblem("Your session is not valid here: sign in again.") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("u"), int):
        raise SessionProblem("Your session is not valid here: sign in again.")
    with project.db.session() as session:
        user = session.scalar(select(User).where(User.id == payload["u"]))
        info = None if user is None else UserInfo.of(user)
        fingerprint = None if user is None else user.token_sha256[:FINGERPRINT_CHARS]
    if info is None or fingerprint != payload.get("t"):
        raise SessionProblem("Your token was replaced since you signed in: sign in with the new one.", True)
    if info.revoked_at is not None:
        raise SessionProblem("This user has been revoked: ask the server's operator for a new token.")
    return WebSession(user=info, csrf=str(payload.get("c", "")))


def csrf_ok(session: WebSession, given: str | None) -> bool:
    """Whether a form field or header carries this session's CSRF token (constant-time comparison)."""
    return bool(given) and bool(session.csrf) and hmac.compare_digest(session.csrf, given or "")
