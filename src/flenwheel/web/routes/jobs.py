"""Jobs: submit a job of a known kind for one of your characters, list, read, cancel, retry, and follow its
progress live by Server-Sent Events. The job table is the source of truth on every backend; submitting,
cancelling and retrying go through the server's job backend so its workers hear of it at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.sse import EventSourceResponse, ServerSentEvent
from sqlalchemy import ColumnElement, and_, func, or_, select
from starlette.concurrency import run_in_threadpool

from flenwheel.errors import InvalidInput
from flenwheel.jobs import kinds
from flenwheel.jobs.base import JobRequest, JobStatus
from flenwheel.jobs.store import JobInfo
from flenwheel.store.models import Character, Job
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
from flenwheel.web.schemas import ErrorPublic, JobCreate, JobPage, JobPublic

router = APIRouter(prefix="/jobs", tags=["jobs"])

EVENTS_POLL_S = 0.1  # how often the event stream looks at the job row
RETRYABLE = {JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.INTERRUPTED}


def visible_to(user: UserInfo) -> ColumnElement[bool]:
    """Jobs the user submitted, and jobs working on one of the user's characters (e.g. a chain's children)."""
    return or_(
        Job.owner_id == user.id,
        Job.character_id.in_(select(Character.id).where(Character.owner_id == user.id)),
    )


def owned_job(user: CurrentUser, session: SessionDep, job_id: Annotated[int, IdPath]) -> int:
    found = session.scalar(select(Job.id).where(Job.id == job_id, visible_to(user)))
    if found is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail=f"You have no job {job_id}: list yours with GET /jobs."
        )
    return job_id


OwnedJob = Annotated[int, Depends(owned_job)]


def job_public(info: JobInfo | Job) -> JobPublic:
    return JobPublic.model_validate(info, from_attributes=True)


@router.post(
    "",
    summary="Submit a job",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobPublic,
    responses={422: {"model": ErrorPublic, "description": "unknown kind or bad payload"}},
)
def submit(body: JobCreate, user: CurrentUser, project: ProjectDep, jobs: JobsDep) -> JobPublic:
    """Queue a job for one of your characters; follow it with GET /jobs/{id}/events. The payload's
    `character` is filled in from `character_id`."""
    character = find_owned_character(project, user, body.character_id)
    known = kinds.known_kinds()
    if body.kind not in known:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"unknown job kind {body.kind!r}: use one of {', '.join(known)}",
        )
    given = body.payload.get("character")
    if given is not None and given != character.name:
        raise InvalidInput(
            f"payload.character is {given!r} but character_id {character.id} is {character.name!r}: "
            "leave `character` out of the payload; character_id says which character the job works on"
        )
    refuse_server_paths(body.payload)
    request = JobRequest(
        kind=body.kind,
        payload={**body.payload, "character": character.name},
        queue=body.queue,
        priority=body.priority,
        character_id=character.id,
        owner_id=user.id,
        max_attempts=body.max_attempts,
    )
    job_id = jobs.submit(request)
    return job_public(jobs.store.get(job_id))


@router.get("/kinds", summary="List job kinds", response_model=list[str])
def list_kinds(user: CurrentUser) -> list[str]:
    """The job kinds this server knows; `kind` in POST /jobs is one of them."""
    return kinds.known_kinds()


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


PATH_KEYS = {"path", "model", "checkpoint", "dir", "out", "file"}


def refuse_server_paths(value: Any, where: str = "payload") -> None:
    """An API user must not point a job at files on the server (another user's LoRA, /etc/…): values of
    path-like keys may be https URLs or names, never absolute, home-relative or `..` paths."""
    if isinstance(value, dict):
        for key, item in value.items():
            name = str(key).lower()
            path_like = name in PATH_KEYS or name.endswith(("_path", "_dir", "_file"))
            if path_like and isinstance(item, str) and _server_path(item):
                raise InvalidInput(
                    f"{where}.{key} is a path on the server ({item!r}): over the API give an https URL or a "
                    "model name; the character's own trained LoRA is used by the studio once it is active"
                )
            refuse_server_paths(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            refuse_server_paths(item, f"{where}[{index}]")


def _server_path(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered.startswith(("https://", "http://")):
        return False
    return (
        lowered.startswith(("/", "~", "\\", "file:", "./"))
        or ".." in lowered.replace("\\", "/").split("/")
        or (len(lowered) > 1 and lowered[1] == ":")  # C:\…
        or lowered.endswith((".safetensors", ".ckpt", ".pt", ".bin"))
    )


def _event_data(info: JobInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "status": info.status.value,
        "progress_done": info.progress_done,
        "progress_total": info.progress_total,
        "message": info.message,
        "error": info.error,
    }


@router.get("/{job_id}/events", summary="Follow a job's progress (SSE)", response_class=EventSourceResponse)
async def events(job_id: OwnedJob, jobs: JobsDep, request: Request) -> AsyncIterator[ServerSentEvent]:
    """Live progress as Server-Sent Events until the job finishes: `event: progress` when done/total or the
    message change, `event: status` when the status changes; each `data:` is the job's state as JSON. The
    stream ends after the final `status` event (or early when the server stops: reconnect)."""
    store = jobs.store
    last_status: JobStatus | None = None
    last_progress: tuple[int, int, str] | None = None
    sequence = 0
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
        await asyncio.sleep(EVENTS_POLL_S)
