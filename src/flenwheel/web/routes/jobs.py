"""Jobs: submit a job of a known kind for one of your characters, list, read, cancel, retry, and follow its
progress live by Server-Sent Events. The job table is the source of truth on every backend; submitting,
cancelling and retrying go through the server's job backend so its workers hear of it at once."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel
from sqlalchemy import ColumnElement, and_, func, or_, select
from starlette.concurrency import run_in_threadpool

from flenwheel.config import Settings
from flenwheel.errors import InvalidInput
from flenwheel.jobs import kinds
from flenwheel.jobs.base import JobRequest, JobStatus
from flenwheel.jobs.store import JobInfo
from flenwheel.pipeline.jobs import BUILT_IN_MODELS, CHECKPOINT_PREFIX, file_refs
from flenwheel.store.models import Character, Checkpoint, Job, TrainingRun, User
from flenwheel.store.project import Project
from flenwheel.web.auth import UserInfo
from flenwheel.web.deps import (
    MAX_ID,
    CurrentUser,
    IdPath,
    JobsDep,
    ProjectDep,
    SessionDep,
    find_owned_character,
)
from flenwheel.web.schemas import ErrorPublic, JobPage, JobPublic, job_create_body

router = APIRouter(prefix="/jobs", tags=["jobs"])

EVENTS_POLL_S = 0.1  # how often the event stream looks at the job row
REVOCATION_EVERY = 20  # polls between checks that the follower's user is not revoked (about 2 s)
RETRYABLE = {JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.INTERRUPTED}


def visible_to(user: UserInfo) -> ColumnElement[bool]:
    """Jobs the user submitted, and jobs working on one of the user's characters (e.g. a chain's children)."""
    return or_(
        Job.owner_id == user.id,
        Job.character_id.in_(select(Character.id).where(Character.owner_id == user.id)),
    )


def owned_job(user: CurrentUser, project: ProjectDep, job_id: Annotated[int, IdPath]) -> int:
    # A short session of its own: an event stream depends on this for as long as it runs, and must not
    # hold a database connection all that time.
    with project.db.session() as session:
        found = session.scalar(select(Job.id).where(Job.id == job_id, visible_to(user)))
    if found is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail=f"You have no job {job_id}: list yours with GET /jobs."
        )
    return job_id


OwnedJob = Annotated[int, Depends(owned_job)]


def job_public(info: JobInfo | Job) -> JobPublic:
    """A job as its owner sees it over the API: its result without any path on the server."""
    public = JobPublic.model_validate(info, from_attributes=True)
    return public.model_copy(update={"result": public_result(public.result)})


API_PATHS = ("/assets/", "/characters/", "/jobs/")  # this API's own URLs, which results may carry
PATH_RESULT_KEYS = {"file", "path", "config_file", "report", "work_dir", "dir", "out"}


def public_result(value: Any) -> Any:
    """A job result as the API shows it: an image is its asset id and its API URL (`/assets/{id}/image`),
    never the blob's file on the server; other file and folder names (reports, run folders, the sheet
    file) are left out, since a client cannot open them — the API serves what they hold."""
    if isinstance(value, dict):
        shown = {
            key: public_result(item)
            for key, item in value.items()
            if not (key in PATH_RESULT_KEYS and isinstance(item, str)) and not _server_path(item)
        }
        if isinstance(value.get("asset_id"), int):
            shown["image_url"] = f"/assets/{value['asset_id']}/image"
        return shown
    if isinstance(value, list):
        return [public_result(item) for item in value if not _server_path(item)]
    return value


def _server_path(value: Any) -> bool:
    """An absolute path (POSIX, Windows or file: URL) in a result, whatever its key."""
    return (
        isinstance(value, str)
        and not value.startswith(API_PATHS)
        and (value.startswith(("/", "file:", "\\\\")) or (len(value) > 2 and value[1:3] in (":\\", ":/")))
    )


def submit_router(settings: Settings) -> APIRouter:
    """POST /jobs over the kinds this server accepts (public kinds, plus the test kinds when enabled): the
    body is a union of one typed model per kind, so a bad payload is a 422 naming the field before anything
    is queued, and the OpenAPI document shows every kind's payload."""
    accepted = kinds.submittable(settings.test_kinds)
    submit_router = APIRouter(prefix="/jobs", tags=["jobs"])

    def submit(body: Any, user: CurrentUser, project: ProjectDep, jobs: JobsDep) -> JobPublic:
        """Queue a job for one of your characters; follow it with GET /jobs/{id}/events. The payload's
        `character` is filled in from `character_id`; the queue follows the kind."""
        character = find_owned_character(project, user, body.character_id)
        kind = kinds.info(body.kind)
        given = body.payload.character
        if given is not None and given not in (character.name, character.key):
            raise InvalidInput(
                f"payload.character is {given!r} but character_id {character.id} is {character.name!r}: "
                "leave `character` out of the payload; character_id says which character the job works on"
            )
        check_files(project, user, body.payload)
        payload = {**body.payload.model_dump(mode="json", exclude_unset=True), "character": character.key}
        assert kind.payload is not None
        kind.payload.model_validate(payload)  # the worker's own model: what it will accept
        request = JobRequest(
            kind=body.kind,
            payload=payload,
            queue=kind.queue,
            priority=body.priority,
            character_id=character.id,
            owner_id=user.id,
            max_attempts=body.max_attempts,
        )
        job_id = jobs.submit(request)
        return job_public(jobs.store.get(job_id))

    submit.__annotations__["body"] = job_create_body(accepted)
    submit_router.post(
        "",
        summary="Submit a job",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=JobPublic,
        responses={422: {"model": ErrorPublic, "description": "unknown kind or bad payload"}},
    )(submit)
    return submit_router


@router.get("/kinds", summary="List job kinds", response_model=list[str])
def list_kinds(user: CurrentUser, project: ProjectDep) -> list[str]:
    """The job kinds you can submit; `kind` in POST /jobs is one of them. (The background chain's stages
    are internal: submit `chain`.)"""
    return [kind.name for kind in kinds.submittable(project.settings.test_kinds)]


@router.get("", summary="List your jobs", response_model=JobPage)
def list_jobs(
    user: CurrentUser,
    session: SessionDep,
    character_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    job_status: Annotated[JobStatus | None, Query(alias="status")] = None,
    kind: Annotated[str | None, Query(max_length=48)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> JobPage:
    """Your jobs, newest first, filtered by character, status and kind."""
    conditions: list[ColumnElement[bool]] = [visible_to(user)]
    if character_id is not None:
        conditions.append(Job.character_id == character_id)
    if job_status is not None:
        conditions.append(Job.status == job_status.value)
    if kind is not None:
        conditions.append(Job.kind == kind)
    where = and_(*conditions)
    total = session.scalar(select(func.count()).select_from(Job).where(where)) or 0
    rows = session.scalars(select(Job).where(where).order_by(Job.id.desc()).limit(limit).offset(offset))
    return JobPage(items=[job_public(row) for row in rows], total=total, limit=limit, offset=offset)


@router.get("/{job_id}", summary="Get a job", response_model=JobPublic)
def get_job(job_id: OwnedJob, jobs: JobsDep) -> JobPublic:
    """One job: status, progress, result or error."""
    return job_public(jobs.store.get(job_id))


@router.post(
    "/{job_id}/cancel",
    summary="Cancel a job",
    response_model=JobPublic,
    responses={409: {"model": ErrorPublic}},
)
def cancel(job_id: OwnedJob, jobs: JobsDep) -> JobPublic:
    """A queued job is cancelled at once; a running one is asked to stop at its next step (its status turns
    `cancelled` when it has). 409 when the job has already finished."""
    before = jobs.store.get(job_id)
    if before.status.finished:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail=f"job {job_id} has already finished ({before.status.value}): there is nothing to cancel",
        )
    jobs.cancel(job_id)
    return job_public(jobs.store.get(job_id))


@router.post(
    "/{job_id}/retry",
    summary="Retry a job",
    response_model=JobPublic,
    responses={409: {"model": ErrorPublic}},
)
def retry(job_id: OwnedJob, jobs: JobsDep) -> JobPublic:
    """Queue a failed, cancelled or interrupted job again; remote work it started is resumed, not paid twice."""
    current = jobs.store.get(job_id)
    if current.status not in RETRYABLE:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail=f"job {job_id} is {current.status.value}: only failed, cancelled or interrupted jobs can "
            "be retried",
        )
    return job_public(jobs.retry(job_id))


def check_files(project: Project, user: UserInfo, payload: BaseModel) -> None:
    """Files over the API (every `FileRef` field of the payload, at any depth) are an allow-list: an https
    URL, a built-in model name, or `checkpoint:ID` of one of the caller's own checkpoints — never a path on
    the server, absolute or relative (`flenwheel.db`, `../x`, `/etc`). A 422 names the field."""
    for loc, value in file_refs(payload):
        problem = _file_problem(project, user, value)
        if problem is not None:
            raise RequestValidationError(
                [
                    {
                        "loc": ("body", "payload", *loc),
                        "msg": f"{value[:200]!r} {problem}",
                        "type": "file_ref",
                    }
                ]
            )


def _file_problem(project: Project, user: UserInfo, value: str) -> str | None:
    if value in BUILT_IN_MODELS:
        return None
    parsed = urlsplit(value)
    if parsed.scheme == "https" and parsed.hostname:
        return None
    if value.startswith(CHECKPOINT_PREFIX):
        number = value.removeprefix(CHECKPOINT_PREFIX)
        owned = None
        if number.isdigit() and int(number) <= MAX_ID:
            with project.db.session() as session:
                owned = session.scalar(
                    select(Checkpoint.id)
                    .join(TrainingRun, TrainingRun.id == Checkpoint.run_id)
                    .join(Character, Character.id == TrainingRun.character_id)
                    .where(Checkpoint.id == int(number), Character.owner_id == user.id)
                )
        if owned is None:
            return "is not one of your checkpoints: list a character's runs and their checkpoints first"
        return None
    return (
        "is not allowed over the API: give an https URL, the built-in model "
        f"{', '.join(sorted(BUILT_IN_MODELS))}, or checkpoint:ID of one of your checkpoints (files on the "
        "server are never readable through a job)"
    )


def _revoked(project: Project, user_id: int) -> bool:
    with project.db.session() as session:
        return session.scalar(select(User.revoked_at).where(User.id == user_id)) is not None


def _event_data(info: JobInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "status": info.status.value,
        "progress_done": info.progress_done,
        "progress_total": info.progress_total,
        "message": info.message,
        "error": info.error,
    }


class StreamSlots:
    """How many event streams each user has open in this server process, capped per user: a follower
    costs a poll every EVENTS_POLL_S, and one user must not take the server's capacity from the others."""

    def __init__(self, per_user: int) -> None:
        self.per_user = per_user
        self._open: dict[int, int] = {}
        self._lock = threading.Lock()

    def acquire(self, user_id: int) -> bool:
        with self._lock:
            if self._open.get(user_id, 0) >= self.per_user:
                return False
            self._open[user_id] = self._open.get(user_id, 0) + 1
            return True

    def release(self, user_id: int) -> None:
        with self._lock:
            left = self._open.get(user_id, 1) - 1
            if left > 0:
                self._open[user_id] = left
            else:
                self._open.pop(user_id, None)


async def stream_slot(request: Request, user: CurrentUser) -> AsyncIterator[None]:
    """One of the user's event-stream slots for the stream's whole life; 429 when all are taken."""
    slots: StreamSlots = request.app.state.stream_slots
    if not slots.acquire(user.id):
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail=f"you already follow {slots.per_user} jobs' event streams, the most one user may have open "
            "at once: close one (or poll GET /jobs?status=running) and try again",
            headers={"Retry-After": "5"},
        )
    try:
        yield
    finally:
        slots.release(user.id)


@router.get(
    "/{job_id}/events",
    summary="Follow a job's progress (SSE)",
    response_class=EventSourceResponse,
    responses={429: {"model": ErrorPublic, "description": "too many event streams open"}},
    dependencies=[Depends(stream_slot)],
)
async def events(
    job_id: OwnedJob, jobs: JobsDep, request: Request, user: CurrentUser, project: ProjectDep
) -> AsyncIterator[ServerSentEvent]:
    """Live progress as Server-Sent Events until the job finishes: `event: progress` when done/total or the
    message change, `event: status` when the status changes; each `data:` is the job's state as JSON. The
    stream ends after the final `status` event (or early when the server stops: reconnect). Each poll reads
    the job in a short session: a stream holds no database connection. A user may follow at most
    FLENWHEEL_EVENT_STREAMS_PER_USER streams at once (429 beyond)."""
    store = jobs.store
    last_status: JobStatus | None = None
    last_progress: tuple[int, int, str] | None = None
    sequence = polls = 0
    while True:
        info = await run_in_threadpool(store.get, job_id)
        progress = (info.progress_done, info.progress_total, info.message)
        if progress != last_progress:
            last_progress = progress
            sequence += 1
            yield ServerSentEvent(event="progress", data=_event_data(info), id=str(sequence))
        if info.status != last_status:
            last_status = info.status
            sequence += 1
            yield ServerSentEvent(event="status", data=_event_data(info), id=str(sequence))
        if info.status.finished or await request.is_disconnected():
            return
        if request.app.state.stopping.is_set():
            yield ServerSentEvent(comment="the server is stopping: reconnect to go on following the job")
            return
        polls += 1
        if polls % REVOCATION_EVERY == 0 and await run_in_threadpool(_revoked, project, user.id):
            yield ServerSentEvent(comment="this API token's user has been revoked")
            return
        await asyncio.sleep(EVENTS_POLL_S)
