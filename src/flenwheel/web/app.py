"""The FastAPI application: `create_app(settings)` opens the project, mounts the routers, maps flenwheel's
errors to HTTP statuses, and (with `job_workers > 0`) runs an embedded job worker pool while it serves."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles

from flenwheel import __version__
from flenwheel.config import Settings
from flenwheel.jobs.base import JobBackend
from flenwheel.pipeline.kinds import register_pipeline_kinds
from flenwheel.store.project import Project
from flenwheel.web import pages
from flenwheel.web.errors import add_error_handlers
from flenwheel.web.limits import MAX_FILES_PER_UPLOAD, BodyLimit
from flenwheel.web.routes import assets, characters, datasets, jobs, reviews, stats, wizard
from flenwheel.web.schemas import HealthPublic

log = logging.getLogger("uvicorn.error")  # shown with the server's own messages

DESCRIPTION = """\
Keep an AI character the same person: upload photos, review them, build dataset versions, and run the
pipeline's stages as background jobs whose progress you can follow live (Server-Sent Events).

**The web app** is at `/`: sign in with the same token; the pages use a session cookie.

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
    {
        "name": "stats",
        "description": "Seed 003's success metrics: your figures (GET /stats); Prometheus for operators (GET /metrics).",
    },
    {"name": "system", "description": "Liveness."},
]


def create_app(settings: Settings, job_workers: int = 0, job_shutdown_timeout_s: float = 30.0) -> FastAPI:
    """The API over the project in `settings`. With `job_workers > 0` (and the embedded job backend) the
    app runs that many worker threads on the job table from start-up to shutdown; at shutdown, jobs still
    running after `job_shutdown_timeout_s` go back to the queue for the next start (or another worker)."""
    register_pipeline_kinds()  # the pipeline's stages are job kinds this app accepts and may run
    project = Project.open(settings)
    upload_limit = int(settings.upload_max_mb * 2**20)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.jobs, app.state.job_workers = _job_backend(project, job_workers)
        try:
            yield
        finally:
            if app.state.job_workers:
                log.info(
                    "stopping job workers: running jobs get up to %g s to finish, then go back to the queue",
                    job_shutdown_timeout_s,
                )
            _stop(app.state.jobs, job_shutdown_timeout_s)
            project.close()

    app = FastAPI(
        title="flenwheel API",
        description=DESCRIPTION,
        version=__version__,
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    # Whole request bodies: a full batch of images at the per-file limit, plus the multipart framing.
    max_body = MAX_FILES_PER_UPLOAD * upload_limit + 2**20
    app.add_middleware(BodyLimit, max_body=max_body, upload_limit=upload_limit)
    app.state.project = project
    # Set when the server starts to stop: open event streams end so it need not wait for them.
    app.state.stopping = threading.Event()
    app.state.jobs = None
    app.state.job_workers = 0
    app.state.stream_slots = jobs.StreamSlots(settings.event_streams_per_user)
    app.include_router(jobs.submit_router(settings))
    for module in (characters, assets, reviews, datasets, jobs, wizard, stats):
        app.include_router(module.router)
    # The web app a person uses in a browser (web/pages.py): its pages and their static files.
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=pages.HERE / "static"), name="static")

    @app.get("/health", tags=["system"], response_model=HealthPublic)
    def health(request: Request) -> HealthPublic:
        """The server is up; how many embedded job workers it runs. Needs no token."""
        return HealthPublic(status="ok", version=__version__, job_workers=request.app.state.job_workers)

    add_error_handlers(app, upload_limit)
    _document_errors(app)
    return app


def _job_backend(project: Project, job_workers: int) -> tuple[JobBackend, int]:
    """The backend the settings choose (jobs/open_backend): the embedded pool, running `job_workers` threads
    here when asked for, or Procrastinate (its workers are `flenwheel worker`s)."""
    from flenwheel.jobs import open_backend
    from flenwheel.jobs.worker import uses_procrastinate

    start = job_workers > 0 and not uses_procrastinate(project)
    backend = open_backend(project, start_workers=start, workers=max(1, job_workers))
    return backend, job_workers if start else 0


def _stop(backend: Any, timeout_s: float) -> None:
    if hasattr(backend, "shutdown"):
        backend.shutdown(timeout=timeout_s)
    elif hasattr(backend, "close"):
        backend.close()


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
