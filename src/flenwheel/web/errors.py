"""flenwheel's errors as HTTP answers: JSON `{"detail": ...}` with the status that fits (400/404/409/422)."""

from __future__ import annotations

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from flenwheel.errors import (
    AssetNotFound,
    CharacterExists,
    CharacterNotFound,
    DatasetEmpty,
    FlenwheelError,
    ImageRejected,
)
from flenwheel.jobs.kinds import UnknownJobKind
from flenwheel.jobs.store import JobNotFound
from flenwheel.web.auth import UserExists, UserNotFound
from flenwheel.web.limits import too_large_detail

# The first matching row wins; any other FlenwheelError is a 400.
STATUS_OF: list[tuple[tuple[type[FlenwheelError], ...], int]] = [
    ((AssetNotFound, JobNotFound, UserNotFound), status.HTTP_404_NOT_FOUND),
    ((CharacterExists, DatasetEmpty, UserExists), status.HTTP_409_CONFLICT),
    ((ImageRejected, UnknownJobKind), status.HTTP_422_UNPROCESSABLE_CONTENT),
]


def status_of(exc: FlenwheelError) -> int:
    for types, code in STATUS_OF:
        if isinstance(exc, types):
            return code
    return status.HTTP_400_BAD_REQUEST


def _page_error(request: Request, code: int, detail: str) -> Response | None:
    """On a page of the web app (web/pages.py marks them), the error as an HTML page (or, for a missing
    session, a redirect to sign-in) instead of JSON; None elsewhere."""
    from flenwheel.web.pages import render

    if not getattr(request.state, "page", False):
        return None
    return render(request, "error.html", None, code, code=code, detail=detail) if code else None


def add_error_handlers(app: FastAPI, upload_limit: int) -> None:
    """JSON error bodies for flenwheel's errors, validation errors, HTTP errors and bugs; on the web app's
    pages, an HTML page saying the same (and a redirect to sign-in when the session is missing or expired)."""
    from urllib.parse import quote

    from flenwheel.web.pages import SignInNeeded

    @app.exception_handler(SignInNeeded)
    async def sign_in_needed(request: Request, exc: SignInNeeded) -> Response:
        why = "expired" if exc.problem.expired else ""
        target = f"/signin?why={why}&next={quote(exc.next_url)}"
        return RedirectResponse(target, status_code=status.HTTP_303_SEE_OTHER)

    @app.exception_handler(FlenwheelError)
    async def flenwheel_error(request: Request, exc: FlenwheelError) -> Response:
        if page := _page_error(request, status_of(exc), str(exc)):
            return page
        if isinstance(exc, CharacterNotFound):
            # Its message lists every character in the project; over the API that would leak other users'.
            return JSONResponse(
                {"detail": "That character no longer exists: list yours with GET /characters."},
                status_code=status.HTTP_404_NOT_FOUND,
            )
        return JSONResponse({"detail": str(exc)}, status_code=status_of(exc))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> Response:
        if page := _page_error(
            request,
            500,
            f"Something went wrong on the server ({type(exc).__name__}): this is a bug in "
            "flenwheel; the server log has the details. Nothing you saved was lost.",
        ):
            return page
        return JSONResponse(
            {
                "detail": f"internal error ({type(exc).__name__}) on {request.method} {request.url.path}: this is "
                "a bug in flenwheel; the server log has the traceback, please report it"
            },
            status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        errors = [
            {"loc": list(error.get("loc", ())), "msg": error.get("msg", ""), "type": error.get("type", "")}
            for error in exc.errors()
        ]
        summary = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
        if page := _page_error(request, 422, f"Some of what was sent is not valid — {summary}."):
            return page
        return JSONResponse(
            {"detail": f"invalid request — {summary}", "errors": errors},
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail
        if page := _page_error(request, exc.status_code, str(detail)):
            return page
        if exc.status_code == status.HTTP_413_CONTENT_TOO_LARGE and detail == "Content Too Large":
            detail = too_large_detail(upload_limit)
        elif exc.status_code == status.HTTP_404_NOT_FOUND and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}: see /docs for the API's routes"
        elif exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
            detail = (
                f"{request.method} is not allowed on {request.url.path}: see /docs for the methods it takes"
            )
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)
