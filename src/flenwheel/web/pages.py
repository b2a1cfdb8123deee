"""The web app's pages: server-rendered (Jinja2, autoescaped) screens over the same functions the API routes
call. Sign-in turns an API token into a session cookie (web/session.py); every form carries the session's
CSRF token, and the pages' scripts call the JSON API with the same cookie and an X-CSRF-Token header.

Pages add no business logic: reading is plain queries of the user's own rows, and every action is either a
call of the same pipeline function an API route calls, or the API route itself called from the page's
script. Another user's character answers 404, like the API.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from sqlalchemy import ColumnElement, and_, func, select
from sqlalchemy.orm import selectinload

from flenwheel.domain import Angle, AssetKind, Expression, ReviewLabel, Shot
from flenwheel.errors import FlenwheelError
from flenwheel.store.models import (
    Analysis,
    Asset,
    Character,
    Checkpoint,
    DatasetVersion,
    Evaluation,
    EvaluationSample,
    Job,
    TrainingRun,
)
from flenwheel.web.auth import UserInfo
from flenwheel.web.deps import MAX_ID, ProjectDep, find_owned_character
from flenwheel.web.session import (
    COOKIE,
    CSRF_FIELD,
    SESSION_MAX_AGE_S,
    SessionProblem,
    WebSession,
    csrf_ok,
    read_session,
    sign_in,
)

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")  # .html templates are autoescaped
SIGNIN_CSRF_COOKIE = "flenwheel_signin"  # double-submit token for the sign-in form (no session yet)
PAGE_SIZE = 48  # tiles per gallery page
ANGLES = tuple(item.value for item in Angle)
SHOTS = tuple(item.value for item in Shot)
EXPRESSIONS = tuple(item.value for item in Expression)


class SignInNeeded(Exception):
    """A page was asked for without a usable session: the handler sends the browser to the sign-in page."""

    def __init__(self, problem: SessionProblem, next_url: str) -> None:
        super().__init__(problem.message)
        self.problem = problem
        self.next_url = next_url


def page_session(request: Request, project: ProjectDep) -> WebSession:
    """The signed-in session; marks the request as a page so errors are answered as HTML."""
    request.state.page = True
    try:
        return read_session(project, request.cookies.get(COOKIE))
    except SessionProblem as problem:
        raise SignInNeeded(problem, request.url.path) from None


PageSession = Annotated[WebSession, Depends(page_session)]


def check_form(session: WebSession, given: str) -> None:
    if not csrf_ok(session, given):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail="This form is out of date (its security token does not match your session): reload the "
            "page and send it again.",
        )


def render(
    request: Request, name: str, session: WebSession | None, status_code: int = 200, **context: Any
) -> Response:
    return templates.TemplateResponse(
        request,
        name,
        {
            "session": session,
            "user": session.user if session else None,
            "csrf": session.csrf if session else "",
            **context,
        },
        status_code=status_code,
    )


def _safe_next(value: str | None) -> str:
    """Only a path on this site (never `//evil.example` or an absolute URL) is followed after sign-in."""
    if not value or not value.startswith("/") or value.startswith("//") or urlsplit(value).netloc:
        return "/"
    return value


router = APIRouter(include_in_schema=False)


@router.get("/signin", response_class=HTMLResponse)
def signin_page(request: Request, why: str = "", next: str = "/") -> Response:
    request.state.page = True
    token = request.cookies.get(SIGNIN_CSRF_COOKIE) or secrets.token_urlsafe(24)
    messages = {
        "expired": "Your session has expired: sign in again to go on. Nothing you saved was lost.",
        "out": "You are signed out.",
        "replaced": "Your token was replaced or revoked since you signed in: sign in with the new one.",
    }
    response = render(
        request, "signin.html", None, message=messages.get(why, ""), form_csrf=token, next=_safe_next(next)
    )
    response.set_cookie(SIGNIN_CSRF_COOKIE, token, httponly=True, samesite="strict", path="/signin")
    return response


@router.post("/signin", response_class=HTMLResponse)
def signin(
    request: Request,
    project: ProjectDep,
    token: Annotated[str, Form(max_length=512)] = "",
    csrf: Annotated[str, Form(max_length=128)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/",
) -> Response:
    request.state.page = True
    expected = request.cookies.get(SIGNIN_CSRF_COOKIE, "")
    if not expected or not secrets.compare_digest(expected, csrf):
        return render(
            request,
            "signin.html",
            None,
            403,
            error="The sign-in form was out of date: send it again.",
            form_csrf=expected or secrets.token_urlsafe(24),
            next=_safe_next(next),
        )
    try:
        _user, cookie = sign_in(project, token)
    except SessionProblem as problem:
        return render(
            request,
            "signin.html",
            None,
            401,
            error=problem.message,
            form_csrf=expected,
            next=_safe_next(next),
        )
    response = RedirectResponse(_safe_next(next), status_code=status.HTTP_303_SEE_OTHER)
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=SESSION_MAX_AGE_S,
        httponly=True,
        samesite="lax",
        path="/",
        secure=request.url.scheme == "https",
    )
    response.delete_cookie(SIGNIN_CSRF_COOKIE, path="/signin")
    return response


@router.post("/signout")
def signout(session: PageSession, csrf: Annotated[str, Form(max_length=128)] = "") -> Response:
    check_form(session, csrf)
    response = RedirectResponse("/signin?why=out", status_code=status.HTTP_303_SEE_OTHER)
    response.delete_cookie(COOKIE, path="/")
    return response


# ---- characters --------------------------------------------------------------------------------------------


def _characters(project: Any, user: UserInfo) -> list[dict[str, Any]]:
    with project.db.session() as db:
        rows = db.execute(
            select(Character, func.count(Asset.id))
            .outerjoin(Asset, Asset.character_id == Character.id)
            .where(Character.owner_id == user.id)
            .group_by(Character.id)
            .order_by(Character.id)
        ).all()
        return [{"c": _character_dict(c), "assets": n} for c, n in rows]


def _character_dict(character: Character) -> dict[str, Any]:
    return {column.key: getattr(character, column.key) for column in Character.__table__.columns}


@router.get("/", response_class=HTMLResponse)
def home(request: Request, session: PageSession, project: ProjectDep) -> Response:
    return render(
        request, "characters.html", session, characters=_characters(project, session.user), form={}, errors=[]
    )


SPEC_FIELDS = (
    "age_range",
    "gender_presentation",
    "ethnicity",
    "hair_colour",
    "hair_length",
    "hair_style",
    "eye_colour",
    "body_type",
    "style",
)


@router.post("/c/new", response_class=HTMLResponse)
async def create_character_form(request: Request, session: PageSession, project: ProjectDep) -> Response:
    """The create form: the same body as POST /characters (a wizard spec, or token + class word)."""
    from starlette.concurrency import run_in_threadpool

    from flenwheel.web.routes.characters import create
    from flenwheel.web.schemas import CharacterCreate

    form = await request.form()
    fields = {key: str(value).strip() for key, value in form.items() if isinstance(value, str)}
    check_form(session, fields.get(CSRF_FIELD, ""))
    errors: list[str] = []
    spec: dict[str, Any] = {key: fields[key] for key in SPEC_FIELDS if fields.get(key)}
    features = [f.strip() for f in fields.get("distinguishing_features", "").split(",") if f.strip()]
    if features:
        spec["distinguishing_features"] = features
    spec["nsfw_allowed"] = fields.get("nsfw") == "on"
    body: dict[str, Any] = {"name": fields.get("name", ""), "spec": spec, "nsfw": fields.get("nsfw") == "on"}
    for key in ("token", "class_word"):
        if fields.get(key):
            body[key] = fields[key]
    try:
        body["budget_usd"] = float(fields.get("budget_usd") or 5.0)
    except ValueError:
        errors.append(f"budget: {fields.get('budget_usd')!r} is not a number of dollars (e.g. 5 or 12.50)")
    if not errors:
        try:
            created = await run_in_threadpool(
                create, CharacterCreate.model_validate(body), session.user, project
            )
        except ValidationError as exc:
            errors = [f"{'.'.join(str(p) for p in e['loc']) or 'form'}: {e['msg']}" for e in exc.errors()]
        except FlenwheelError as exc:
            errors = [str(exc)]
        else:
            return RedirectResponse(f"/c/{created.id}", status_code=status.HTTP_303_SEE_OTHER)
    return render(
        request,
        "characters.html",
        session,
        422,
        characters=_characters(project, session.user),
        form=fields,
        errors=errors,
    )


def _owned(project: Any, session: WebSession, character_id: int) -> dict[str, Any]:
    ref = find_owned_character(project, session.user, character_id)  # 404 for anyone else's
    with project.db.session() as db:
        return _character_dict(db.get_one(Character, ref.id))


# ---- photos and review -------------------------------------------------------------------------------------


def _tile(asset: Asset, threshold: float) -> dict[str, Any]:
    from flenwheel.datasets.curate import current_review
    from flenwheel.domain import QualityMetrics
    from flenwheel.quality import QualityThresholds, quality_problems

    review = current_review(asset)
    data = asset.analysis.data if asset.analysis is not None else {}
    distance = None
    for candidate in reversed(asset.reviews):
        if candidate.identity_distance is not None:
            distance = candidate.identity_distance
            break
    flags: list[str] = []
    if data.get("quality"):
        try:
            flags = quality_problems(QualityMetrics.model_validate(data["quality"]), QualityThresholds())
        except (ValidationError, TypeError, AttributeError):
            flags = []
    if asset.analysis is not None and not data.get("faces"):
        flags.append("no face found")
    return {
        "id": asset.id,
        "kind": asset.kind,
        "name": asset.source_name or f"asset {asset.id}",
        "label": review.label if review else None,
        "reason": review.reason if review else "",
        "source": review.source if review else None,
        "distance": distance,
        "threshold": threshold,
        "angle": data.get("angle"),
        "shot": data.get("shot"),
        "expression": data.get("expression"),
        "flags": flags,
        "reference": asset.is_reference,
        "width": asset.width,
        "height": asset.height,
    }


@router.get("/c/{character_id}", response_class=HTMLResponse)
def photos(
    request: Request,
    session: PageSession,
    project: ProjectDep,
    character_id: int,
    label: str = "",
    kind: str = "",
    angle: str = "",
    shot: str = "",
    expression: str = "",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> Response:
    from flenwheel.web.routes.assets import current_label

    character = _owned(project, session, _id(character_id))
    conditions: list[ColumnElement[bool]] = [Asset.character_id == character["id"]]
    if label == "none":
        conditions.append(current_label().is_(None))
    elif label in {item.value for item in ReviewLabel}:
        conditions.append(current_label() == label)
    if kind in {item.value for item in AssetKind}:
        conditions.append(Asset.kind == kind)
    facts = {"angle": angle, "shot": shot, "expression": expression}
    with project.db.session() as db:
        query = select(Asset).where(and_(*conditions))
        if any(facts.values()):
            query = query.join(Analysis, Analysis.asset_id == Asset.id)
        for key, value in facts.items():
            if value:
                query = query.where(Analysis.data[key].as_string() == value)
        total = db.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = db.scalars(
            query.options(selectinload(Asset.reviews), selectinload(Asset.analysis))
            .order_by(Asset.id)
            .limit(PAGE_SIZE)
            .offset((page - 1) * PAGE_SIZE)
        ).all()
        tiles = [_tile(a, project.settings.identity_threshold) for a in rows]
        versions = db.scalar(
            select(func.count(DatasetVersion.id)).where(DatasetVersion.character_id == character["id"])
        )
    pages = max(1, -(-total // PAGE_SIZE))
    filters = {"label": label, "kind": kind, "angle": angle, "shot": shot, "expression": expression}
    return render(
        request,
        "photos.html",
        session,
        character=character,
        tiles=tiles,
        total=total,
        page=page,
        pages=pages,
        filters=filters,
        query=_query(filters),
        labels=[item.value for item in ReviewLabel],
        kinds=[item.value for item in AssetKind],
        angles=ANGLES,
        shots=SHOTS,
        expressions=EXPRESSIONS,
        coverage=_coverage(project, character["id"]),
        versions=versions or 0,
        stats=_stats(project, frozenset({character["id"]})),
        tab="photos",
    )


def _query(filters: dict[str, str]) -> str:
    return "&".join(f"{key}={quote(value)}" for key, value in filters.items() if value)


def _coverage(project: Any, character_id: int) -> dict[str, Any]:
    """What the images labelled good cover (angles, shots, expressions), from their measured facts, and which
    angles and shots none of them has."""
    from flenwheel.web.routes.assets import current_label

    counts: dict[str, dict[str, int]] = {"angle": {}, "shot": {}, "expression": {}}
    with project.db.session() as db:
        rows = db.scalars(
            select(Analysis.data)
            .join(Asset, Asset.id == Analysis.asset_id)
            .where(Asset.character_id == character_id, current_label() == ReviewLabel.GOOD.value)
        )
        for data in rows:
            for key in counts:
                if value := data.get(key):
                    counts[key][str(value)] = counts[key].get(str(value), 0) + 1
    missing = [a for a in ANGLES if a not in counts["angle"]] + [s for s in SHOTS if s not in counts["shot"]]
    return {"counts": counts, "missing": missing}


def _id(value: int) -> int:
    if not 1 <= value <= MAX_ID:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"There is no character {value}.")
    return value


@router.post("/c/{character_id}/datasets")
async def build_dataset(
    session: PageSession,
    project: ProjectDep,
    character_id: int,
    csrf: Annotated[str, Form(max_length=128)] = "",
) -> Response:
    """Build a dataset version from the images labelled good (datasets/versions.py, as POST …/datasets)."""
    from starlette.concurrency import run_in_threadpool

    from flenwheel.datasets.versions import build_dataset_version

    check_form(session, csrf)
    character = _owned(project, session, _id(character_id))
    built = await run_in_threadpool(build_dataset_version, project, f"#{character['id']}")
    note = "built" if built.created else "unchanged"
    return RedirectResponse(
        f"/c/{character['id']}/datasets?{note}=v{built.version.number}", status_code=status.HTTP_303_SEE_OTHER
    )


@router.get("/c/{character_id}/datasets", response_class=HTMLResponse)
def datasets_page(request: Request, session: PageSession, project: ProjectDep, character_id: int) -> Response:
    from flenwheel.datasets.export import ExportFormat

    character = _owned(project, session, _id(character_id))
    with project.db.session() as db:
        versions = [
            {
                "number": v.number,
                "label": v.label,
                "images": len(v.items),
                "composition": v.composition,
                "created_at": v.created_at,
                "items": [i.asset_id for i in v.items[:12]],
            }
            for v in db.scalars(
                select(DatasetVersion)
                .where(DatasetVersion.character_id == character["id"])
                .options(selectinload(DatasetVersion.items))
                .order_by(DatasetVersion.number.desc())
            )
        ]
    return render(
        request,
        "datasets.html",
        session,
        character=character,
        versions=versions,
        formats=[f.value for f in ExportFormat],
        built=request.query_params.get("built"),
        unchanged=request.query_params.get("unchanged"),
        tab="datasets",
    )


# ---- jobs ----------------------------------------------------------------------------------------------------


def _jobs(
    project: Any, user: UserInfo, character_id: int | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    from flenwheel.web.routes.jobs import job_public, visible_to

    with project.db.session() as db:
        query = select(Job).where(visible_to(user))
        if character_id is not None:
            query = query.where(Job.character_id == character_id)
        rows = db.scalars(query.order_by(Job.id.desc()).limit(limit))
        return [job_public(row).model_dump(mode="json") for row in rows]


@router.get("/activity", response_class=HTMLResponse)
def jobs_page(request: Request, session: PageSession, project: ProjectDep) -> Response:
    with project.db.session() as db:
        names = {
            row.id: row.name
            for row in db.execute(
                select(Character.id, Character.name).where(Character.owner_id == session.user.id)
            )
        }
    return render(
        request,
        "jobs.html",
        session,
        jobs=_jobs(project, session.user),
        names=names,
        stats=_stats(project, frozenset(names)),
        tab="jobs",
    )


def _stats(project: Any, character_ids: frozenset[int]) -> Any:
    """Seed 003's figures over these characters' last 7 days: what GET /stats answers (flenwheel.metrics)."""
    from flenwheel.metrics import compute_stats
    from flenwheel.metrics.figures import parse_since

    with project.db.session() as db:
        return compute_stats(db, parse_since("7d"), character_ids)


# ---- runs and evaluation -------------------------------------------------------------------------------------


@router.get("/c/{character_id}/runs", response_class=HTMLResponse)
def runs_page(request: Request, session: PageSession, project: ProjectDep, character_id: int) -> Response:
    from flenwheel.pipeline.studio import decide_mode

    character = _owned(project, session, _id(character_id))
    with project.db.session() as db:
        runs = []
        for run in db.scalars(
            select(TrainingRun)
            .where(TrainingRun.character_id == character["id"])
            .options(selectinload(TrainingRun.checkpoints))
            .order_by(TrainingRun.id.desc())
        ):
            evaluation = db.scalars(
                select(Evaluation).where(Evaluation.run_id == run.id).order_by(Evaluation.id.desc())
            ).first()
            runs.append(
                {
                    "id": run.id,
                    "label": run.label,
                    "trainer": run.trainer,
                    "status": run.status,
                    "step": run.step,
                    "total_steps": run.total_steps,
                    "error": run.error,
                    "losses": run.losses,
                    "curve": _loss_path(run.losses),
                    "checkpoints": [{"id": c.id, "step": c.step, "epoch": c.epoch} for c in run.checkpoints],
                    "evaluation": _evaluation(db, evaluation) if evaluation else None,
                }
            )
        versions = list(
            db.scalars(
                select(DatasetVersion.number)
                .where(DatasetVersion.character_id == character["id"])
                .order_by(DatasetVersion.number.desc())
            )
        )
    mode = decide_mode(project, f"#{character['id']}")
    return render(
        request,
        "runs.html",
        session,
        character=character,
        runs=runs,
        versions=versions,
        mode=mode,
        jobs=_jobs(project, session.user, character["id"], 10),
        tab="runs",
    )


@router.get("/c/{character_id}/runs/{run_id}/progress")
def run_progress(session: PageSession, project: ProjectDep, character_id: int, run_id: int) -> dict[str, Any]:
    """A run's live figures for the Runs page (polled while it trains): status, step of total, the loss curve's
    SVG points and first/last loss. Another user's run — or one of another character — is a 404."""
    character = _owned(project, session, _id(character_id))
    with project.db.session() as db:
        run = db.get(TrainingRun, _id(run_id))
        if run is None or run.character_id != character["id"]:
            raise HTTPException(status_code=404, detail="no such run")
        losses = list(run.losses or [])
        return {
            "status": run.status,
            "step": run.step,
            "total_steps": run.total_steps,
            "curve": _loss_path(losses),
            "points": len(losses),
            "first": float(losses[0][1]) if losses else None,
            "last": float(losses[-1][1]) if losses else None,
        }


def _loss_path(losses: list[Any], width: int = 480, height: int = 160) -> str:
    """An SVG polyline's points for [[step, loss], …], scaled into width × height (empty when < 2 points)."""
    points = [(float(s), float(v)) for s, v in losses if v == v] if losses else []
    if len(points) < 2:
        return ""
    steps = [p[0] for p in points]
    values = [p[1] for p in points]
    s0, s1, v0, v1 = min(steps), max(steps), min(values), max(values)
    span_s, span_v = (s1 - s0) or 1.0, (v1 - v0) or 1.0
    return " ".join(
        f"{(s - s0) / span_s * width:.1f},{height - (v - v0) / span_v * height:.1f}" for s, v in points
    )


def _evaluation(db: Any, evaluation: Evaluation) -> dict[str, Any]:
    samples = db.scalars(
        select(EvaluationSample)
        .where(EvaluationSample.evaluation_id == evaluation.id)
        .order_by(EvaluationSample.checkpoint_id, EvaluationSample.strength, EvaluationSample.prompt_key)
    ).all()
    steps = {
        row.id: row.step
        for row in db.execute(
            select(Checkpoint.id, Checkpoint.step).where(
                Checkpoint.id.in_({s.checkpoint_id for s in samples} or {0})
            )
        )
    }
    strengths = sorted({s.strength for s in samples})
    prompts = sorted({s.prompt_key for s in samples})
    cells: dict[tuple[int, float], list[Any]] = {}
    for sample in samples:
        cells.setdefault((sample.checkpoint_id, sample.strength), []).append(sample)
    rows = []
    for checkpoint_id in sorted(steps, key=lambda c: steps[c]):
        row = []
        for strength in strengths:
            group = cells.get((checkpoint_id, strength), [])
            distances = [s.identity_distance for s in group if s.identity_distance is not None]
            row.append(
                {
                    "strength": strength,
                    "distance": sum(distances) / len(distances) if distances else None,
                    "faces": sum(s.face_found for s in group),
                    "n": len(group),
                    "samples": [
                        {"asset_id": s.asset_id, "prompt": s.prompt_key} for s in group if s.asset_id
                    ],
                }
            )
        rows.append({"checkpoint_id": checkpoint_id, "step": steps[checkpoint_id], "cells": row})
    return {
        "id": evaluation.id,
        "status": evaluation.status,
        "strengths": strengths,
        "prompts": prompts,
        "rows": rows,
        "selected_checkpoint_id": evaluation.selected_checkpoint_id,
        "selected_strength": evaluation.selected_strength,
        "reason": evaluation.reason,
        "advice": evaluation.advice,
    }


# ---- studio ----------------------------------------------------------------------------------------------------


@router.get("/c/{character_id}/studio", response_class=HTMLResponse)
def studio_page(request: Request, session: PageSession, project: ProjectDep, character_id: int) -> Response:
    from flenwheel.pipeline.studio import decide_mode

    character = _owned(project, session, _id(character_id))
    mode = decide_mode(project, f"#{character['id']}")
    from flenwheel.providers.registry import ProviderRegistry

    engines = [
        {"id": engine.id, "nsfw": bool(getattr(engine, "allows_nsfw", False))}
        for engine in ProviderRegistry.shared(project.settings).all()
    ]
    with project.db.session() as db:
        recent = [
            _tile(a, project.settings.identity_threshold)
            for a in db.scalars(
                select(Asset)
                .where(Asset.character_id == character["id"], Asset.kind == AssetKind.GENERATED.value)
                .options(selectinload(Asset.reviews), selectinload(Asset.analysis))
                .order_by(Asset.id.desc())
                .limit(24)
            )
        ]
    return render(
        request,
        "studio.html",
        session,
        character=character,
        mode=mode,
        engines=engines,
        recent=recent,
        tab="studio",
    )


# ---- wizard ----------------------------------------------------------------------------------------------------


@router.get("/c/{character_id}/wizard", response_class=HTMLResponse)
def wizard_page(request: Request, session: PageSession, project: ProjectDep, character_id: int) -> Response:
    character = _owned(project, session, _id(character_id))
    with project.db.session() as db:
        staged = db.scalars(
            select(Asset)
            .where(Asset.character_id == character["id"], Asset.kind.in_(("base", "anchor", "generated")))
            .order_by(Asset.id)
        ).all()
        stages: dict[str, list[dict[str, Any]]] = {}
        for asset in staged:
            stage = str(asset.attributes.get("stage", ""))
            if stage in ("base", "skin_pass", "profile"):
                stages.setdefault(stage, []).append(
                    {
                        "id": asset.id,
                        "picked": bool(asset.attributes.get("picked")),
                        "position": asset.attributes.get("position", ""),
                        "attributes": asset.attributes,
                        "parents": [p for p in asset.parents if isinstance(p, int)],
                        "width": asset.width,
                        "height": asset.height,
                    }
                )
    return render(
        request,
        "wizard.html",
        session,
        character=character,
        stages=stages,
        jobs=_jobs(project, session.user, character["id"], 10),
        tab="wizard",
    )


# ---- flywheel ----------------------------------------------------------------------------------------------


@router.get("/c/{character_id}/flywheel", response_class=HTMLResponse)
def flywheel_page(request: Request, session: PageSession, project: ProjectDep, character_id: int) -> Response:
    """The flywheel's rounds (pipeline/flywheel.py): each round's stage and status, its review queue (reviewed
    on the Photos screen with the same keys) and the round-over-round comparison."""
    from flenwheel.pipeline.flywheel import flywheel_rounds

    character = _owned(project, session, _id(character_id))
    rounds = [
        {
            "number": r.number,
            "status": r.status,
            "stage": r.stage,
            "advice": (r.record.get("review") or {}).get("advice", ""),
            "queue": len((r.record.get("filter") or {}).get("queue", [])),
            "candidates": len(r.record.get("candidates") or []),
            "comparison": r.record.get("comparison") or {},
            "stopped": r.record.get("stopped", ""),
            "filter": r.record.get("filter") or {},
            # Every candidate lost for want of a face: nothing was measured (the tiny model draws none).
            "no_face": bool((r.record.get("filter") or {}).get("removed"))
            and ((r.record.get("filter") or {}).get("removed_by") or {}).get("no face")
            == (r.record.get("filter") or {}).get("removed"),
        }
        for r in reversed(flywheel_rounds(project, f"#{character['id']}"))
    ]
    return render(
        request,
        "flywheel.html",
        session,
        character=character,
        rounds=rounds,
        jobs=_jobs(project, session.user, character["id"], 10),
        tab="flywheel",
    )


# ---- sheet -------------------------------------------------------------------------------------------------


@router.get("/c/{character_id}/sheet", response_class=HTMLResponse)
def sheet_page(request: Request, session: PageSession, project: ProjectDep, character_id: int) -> Response:
    """The character sheet (seed 004): per anchor its K candidates (click one to pick it), and the variations
    drawn from the picked anchor with their strength and identity check."""
    from flenwheel.pipeline.sheet import load_sheet_config

    character = _owned(project, session, _id(character_id))
    config = load_sheet_config(project, f"#{character['id']}")
    strengths = {v.id: v.strength for v in config.variations}
    with project.db.session() as db:
        drawn = db.scalars(
            select(Asset)
            .where(Asset.character_id == character["id"], Asset.kind.in_(("anchor", "variation")))
            .order_by(Asset.id)
        ).all()
        anchors: dict[str, dict[str, Any]] = {
            a.id: {"id": a.id, "prompt": a.prompt, "candidates": [], "variations": []} for a in config.anchors
        }
        for asset in drawn:
            a = asset.attributes
            group = anchors.get(str(a.get("anchor", "")))
            if group is None:
                continue
            item = {
                "id": asset.id,
                "picked": bool(a.get("picked")),
                "by": a.get("pick", ""),
                "reason": a.get("pick_reason", ""),
                "identity": a.get("identity"),
                "distance": a.get("identity_distance"),
                "pose": (a.get("pose") or {}).get("status")
                if isinstance(a.get("pose"), dict)
                else a.get("pose"),
                "variation": a.get("variation", ""),
                "strength": strengths.get(str(a.get("variation", ""))),
                "width": asset.width,
                "height": asset.height,
            }
            group["candidates" if a.get("stage") == "anchor" else "variations"].append(item)
    return render(
        request,
        "sheet.html",
        session,
        character=character,
        anchors=list(anchors.values()),
        threshold=project.settings.identity_threshold,
        jobs=_jobs(project, session.user, character["id"], 10),
        tab="sheet",
    )
