"""Seed 003's success metrics over the API: GET /stats (the caller's own characters; an operator's token sees
every character) and GET /metrics (Prometheus text, for operators), both read from the store at request time
(flenwheel.metrics) so every API process and worker host answers the same figures."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status

from flenwheel.metrics import Stats, compute_stats
from flenwheel.metrics.figures import parse_since
from flenwheel.metrics.records import owned_characters
from flenwheel.web.deps import MAX_ID, CurrentUser, ProjectDep, character_not_found
from flenwheel.web.schemas import ErrorPublic

router = APIRouter(tags=["stats"])


@router.get(
    "/stats",
    response_model=Stats,
    responses={404: {"model": ErrorPublic, "description": "You have no such character."}},
)
def stats(
    user: CurrentUser,
    project: ProjectDep,
    since: Annotated[
        str, Query(max_length=40, description="A window ending now (7d, 12h, 30m, 2w), a date, or `all`.")
    ] = "7d",
    character_id: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="Only this one of your characters.")
    ] = None,
) -> Stats:
    """Seed 003's success metrics over your characters' requests: each SLA marked met / not met (with the
    engines that produced the figures), P50/P90 time-to-first and time-to-all with their sample counts,
    completion and failure rates with the most frequent error kinds, cost per image per area and engine,
    spend per character against the $2 creation and $5 with-LoRA caps, and the studio's identity pass rate
    per mode. An operator's token (`flenwheel user add NAME --operator`) sees every character."""
    window = parse_since(since)
    with project.db.session() as session:
        visible = None if user.operator else owned_characters(session, user.id)
        if character_id is not None:
            if visible is not None and character_id not in visible:
                raise character_not_found(character_id)
            visible = frozenset({character_id})
        return compute_stats(session, window, visible)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition format."},
        403: {"model": ErrorPublic, "description": "Your token is not an operator's."},
    },
)
def metrics(user: CurrentUser, project: ProjectDep) -> Response:
    """Every character's metrics in the Prometheus text format, for an operator's token: request-duration
    and time-to-first-output histograms (labels area, engine, model; SLA targets are bucket edges), finished
    requests by status, failures by error kind, cost and images. Scrape it with
    `authorization: {credentials: <token>}` in the scrape config."""
    if not user.operator:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail="GET /metrics shows every user's figures: only an operator's token may read it "
            "(`flenwheel user operator NAME` on the machine that holds the project). Your own figures are "
            "at GET /stats.",
        )
    from flenwheel.metrics.prometheus import exposition

    body, content_type = exposition(project.db)
    return Response(content=body, media_type=content_type)
