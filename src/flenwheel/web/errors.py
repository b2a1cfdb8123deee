"""flenwheel's errors as HTTP answers: JSON `{"detail": ...}` with the status that fits (400/404/409/422)."""

from __future__ import annotations

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
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


def add_error_handlers(app: FastAPI, upload_limit: int) -> None:
    """JSON error bodies for flenwheel's errors, validation errors, HTTP errors and bugs."""

    @app.exception_handler(FlenwheelError)
    async def flenwheel_error(request: Request, exc: FlenwheelError) -> JSONResponse:
        if isinstance(exc, CharacterNotFound):
            # Its message lists every character in the project; over the API that would leak other users'.
            return JSONResponse(
                {"detail": "That character no longer exists: list yours with GET /characters."},
                status_code=status.HTTP_404_NOT_FOUND,
            )
        return JSONResponse({"detail": str(exc)}, status_code=status_of(exc))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {
                "detail": f"internal error ({type(exc).__name__}) on {request.method} {request.url.path}: this is "
                "a bug in flenwheel; the server log has the traceback, please report it"
            },
            status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(error.get("loc", ())), "msg": error.get("msg", ""), "type": error.get("type", "")}
            for error in exc.errors()
        ]
        summary = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
        return JSONResponse(
            {"detail": f"invalid request — {summary}", "errors": errors},
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail
        if exc.status_code == status.HTTP_413_CONTENT_TOO_LARGE and detail == "Content Too Large":
            detail = too_large_detail(upload_limit)
        elif exc.status_code == status.HTTP_404_NOT_FOUND and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}: see /docs for the API's routes"
        elif exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
            detail = (
                f"{request.method} is not allowed on {request.url.path}: see /docs for the methods it takes"
            )
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)
