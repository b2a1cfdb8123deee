"""The FastAPI application: `create_app(settings)` opens the project, mounts the routers, maps flenwheel's
errors to HTTP statuses, and (with `job_workers > 0`) runs an embedded job worker pool while it serves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flenwheel import __version__
from flenwheel.config import Settings
from flenwheel.errors import (
    AssetNotFound,
    CharacterExists,
    CharacterNotFound,
    DatasetEmpty,
    FlenwheelError,
    ImageRejected,
)
from flenwheel.store.project import Project
from flenwheel.web.routes import assets, characters, datasets, jobs, reviews
from flenwheel.web.schemas import HealthPublic

DESCRIPTION = """\
Keep an AI character the same person: upload photos, review them, build dataset versions, and run the
pipeline's stages as background jobs whose progress you can follow live (Server-Sent Events).

**Authentication.** Every route except `/health` needs `Authorization: Bearer <token>`. Make a user and
its token on the machine that holds the project with `flenwheel user add NAME` (the token is printed once).
Each character belongs to the user who created it; another user's characters, assets and jobs answer 404.

**Errors** are JSON `{"detail": "..."}` saying what is wrong and how to fix it (a 422 also lists `errors`
per field). **Lists** are paged with `limit` and `offset` and report `total`.
"""

TAGS = [
    {
        "name": "characters",
        "description": "Characters you own: create (optionally from a wizard spec), list, delete.",
    },
    {
        "name": "assets",
        "description": "Images with provenance: filter, page, download, upload (checked like ingest).",
    },
    {
        "name": "reviews",
        "description": "Labels (good / needs_correction / reject, with a reason) and captions.",
    },
    {"name": "datasets", "description": "Immutable dataset versions with their composition; exports as zip."},
    {"name": "jobs", "description": "Background work: submit, list, cancel, retry; live progress as SSE."},
    {"name": "system", "description": "Liveness."},
]

NOT_FOUND = (AssetNotFound,)
CONFLICT = (CharacterExists, DatasetEmpty)


def create_app(settings: Settings, job_workers: int = 0) -> FastAPI:
    """The API over the project in `settings`. With `job_workers > 0` (and the embedded job backend) the
    app runs that many worker threads on the job table from start-up to shutdown."""
    project = Project.open(settings)
    upload_limit = int(settings.upload_max_mb * 2**20)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.jobs, app.state.job_workers = _job_backend(project, job_workers)
        try:
            yield
        finally:
            _stop(app.state.jobs)
            project.close()

    app = FastAPI(
        title="flenwheel API",
        description=DESCRIPTION,
        version=__version__,
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    # Whole request bodies: a full batch of images at the per-file limit, plus the multipart framing.
    max_body = assets.MAX_FILES_PER_UPLOAD * upload_limit + 2**20
    app.add_middleware(BodyLimit, max_body=max_body, upload_limit=upload_limit)
    app.state.project = project
    app.state.jobs = None
    app.state.job_workers = 0
    for module in (characters, assets, reviews, datasets, jobs):
        app.include_router(module.router)

    @app.get("/health", tags=["system"], response_model=HealthPublic)
    def health(request: Request) -> HealthPublic:
        """The server is up; how many embedded job workers it runs. Needs no token."""
        return HealthPublic(status="ok", version=__version__, job_workers=request.app.state.job_workers)

    _add_error_handlers(app, upload_limit)
    _document_errors(app)
    return app


def too_large_detail(upload_limit: int) -> str:
    return (
        f"the request body is too large: upload at most {assets.MAX_FILES_PER_UPLOAD} images of at most "
        f"{upload_limit / 2**20:.3g} MiB each per request (FLENWHEEL_UPLOAD_MAX_MB on the server)"
    )


class BodyLimit:
    """Refuse request bodies over `max_body` with a JSON 413 naming the limit: at once when Content-Length
    says so, else as soon as a chunked body grows past it (the handler's read then fails with 413)."""

    def __init__(self, app: ASGIApp, max_body: int, upload_limit: int) -> None:
        self.app = app
        self.max_body = max_body
        self.upload_limit = upload_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            response = JSONResponse(
                {"detail": too_large_detail(self.upload_limit)},
                status_code=status.HTTP_413_CONTENT_TOO_LARGE,
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise StarletteHTTPException(status.HTTP_413_CONTENT_TOO_LARGE, "Content Too Large")
            return message

        await self.app(scope, counted, send)


def _job_backend(project: Project, job_workers: int) -> tuple[Any, int]:
    """The embedded pool when asked for, Procrastinate when configured, else the job table alone (jobs wait
    for a `flenwheel worker`)."""
    from flenwheel.jobs.worker import uses_procrastinate

    if uses_procrastinate(project):
        from flenwheel.jobs.procrastinate_backend import ProcrastinateBackend

        return ProcrastinateBackend(project), 0
    if job_workers > 0:
        from flenwheel.jobs.embedded import EmbeddedBackend

        return EmbeddedBackend(project, workers=job_workers).start(), job_workers
    from flenwheel.jobs.store import JobStore

    return JobStore(project.db), 0


def _stop(backend: Any) -> None:
    if hasattr(backend, "shutdown"):
        backend.shutdown(timeout=30.0)
    elif hasattr(backend, "close"):
        backend.close()


def _status_of(exc: FlenwheelError) -> int:
    from flenwheel.jobs.kinds import UnknownJobKind
    from flenwheel.jobs.store import JobNotFound

    if isinstance(exc, (*NOT_FOUND, JobNotFound)):
        return status.HTTP_404_NOT_FOUND
    if isinstance(exc, CONFLICT):
        return status.HTTP_409_CONFLICT
    if isinstance(exc, ImageRejected | UnknownJobKind):
        return status.HTTP_422_UNPROCESSABLE_CONTENT
    from flenwheel.web.auth import UserExists

    if isinstance(exc, UserExists):
        return status.HTTP_409_CONFLICT
    return status.HTTP_400_BAD_REQUEST


def _add_error_handlers(app: FastAPI, upload_limit: int) -> None:
    @app.exception_handler(FlenwheelError)
    async def flenwheel_error(request: Request, exc: FlenwheelError) -> JSONResponse:
        if isinstance(exc, CharacterNotFound):
            # Its message lists every character in the project; over the API that would leak other users'.
            return JSONResponse(
                {"detail": "That character no longer exists: list yours with GET /characters."},
                status_code=status.HTTP_404_NOT_FOUND,
            )
        return JSONResponse({"detail": str(exc)}, status_code=_status_of(exc))

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


def _document_errors(app: FastAPI) -> None:
    """Make the OpenAPI document describe 422 bodies as this app sends them (detail text + field errors)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        if "HTTPValidationError" in components:
            components["HTTPValidationError"] = {
                "title": "HTTPValidationError",
                "type": "object",
                "required": ["detail"],
                "properties": {
                    "detail": {"type": "string", "title": "Detail"},
                    "errors": {"type": "array", "items": {"type": "object"}, "title": "Errors"},
                },
            }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
