"""What the store recorded, read back as one row per user request: the metrics' raw material.

A *request* is what a user waits on in one area of seed 003: a job (base images, profile set, regenerate,
studio generate, sheet, skin pass, enrichment, training, evaluation) or a direct engine call made outside any
job (`flenwheel edit`, `flenwheel upscale`, the demo's first images), which is one `run_call` row. Nothing is
computed that the store did not record:

- submitted: `job.created_at` (what the user waits from, queue included), or the call's `created_at` (when it
  began: the run context writes it at the start of every call);
- first output: the `created_at` of the request's first asset (assets are stored as each image lands);
- finished: `job.finished_at`, or the call's `updated_at` when it was settled;
- engine and model: the request's outputs' `provider`/`model` (the most frequent), else its calls' engine, else
  a trainer's id from its payload;
- cost: what its calls billed (`billed_usd`), plus what calls that may still bill keep reserved;
- error: `job.error`, or the call's `error` (the router records an engine's failure on the call).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from flenwheel.store.models import Asset, Character, Job, RunCall, TrainingRun


class Area(StrEnum):
    """The areas of seed 003 (and the other stages that make images or LoRAs)."""

    BASE_IMAGES = "base_images"
    PROFILE_SET = "profile_set"
    REGENERATE = "regenerate"
    STUDIO_GENERATE = "studio_generate"
    EDIT = "edit"
    UPSCALE = "upscale"
    SHEET = "sheet"
    SKIN_PASS = "skin_pass"
    ENRICH = "enrich"
    TRAINING = "training"
    EVALUATION = "evaluation"


# Job kinds (pipeline/kinds.py) by area; the chain's own stages count in the area they do.
JOB_AREAS: dict[str, Area] = {
    "base_images": Area.BASE_IMAGES,
    "profile_set": Area.PROFILE_SET,
    "regenerate_position": Area.REGENERATE,
    "studio_generate": Area.STUDIO_GENERATE,
    "generate": Area.STUDIO_GENERATE,
    "sheet": Area.SHEET,
    "chain_sheet": Area.SHEET,
    "skin_pass": Area.SKIN_PASS,
    "enrich": Area.ENRICH,
    "train": Area.TRAINING,
    "chain_train": Area.TRAINING,
    "evaluate": Area.EVALUATION,
    "chain_evaluate": Area.EVALUATION,
}
# The area an engine call's money belongs to, from the kind of the asset it stored (spend against the caps).
ASSET_AREAS: dict[str, Area] = {
    "edited": Area.EDIT,
    "upscaled": Area.UPSCALE,
    "base": Area.BASE_IMAGES,
    "anchor": Area.SHEET,
    "variation": Area.SHEET,
    "enriched": Area.ENRICH,
    "generated": Area.STUDIO_GENERATE,
}
# The areas whose money counts toward a character's creation cap (seed 003: ≤ $2 for base + profile set),
# and the ones that, with those, make the LoRA (≤ $5 including training).
CREATION_AREAS = frozenset({Area.BASE_IMAGES, Area.SKIN_PASS, Area.PROFILE_SET, Area.REGENERATE})
LORA_AREAS = CREATION_AREAS | {Area.SHEET, Area.ENRICH, Area.TRAINING, Area.EVALUATION}
MAY_BILL = ("reserved", "submitted", "abandoned")  # the call's money is still held (store/run.py)
# No engine ran for the request: it failed before one was called (budget, NSFW policy, no engine could take
# it), or it reused everything an earlier request had stored (a rerun of a finished stage).
NO_ENGINE = "none"


@dataclass(frozen=True)
class Request:
    """One request as the metrics count it. Times are timezone-aware UTC; `cost_usd` in USD."""

    area: Area
    engine: str
    model: str
    character_id: int | None
    source: str  # "job" or "call"
    ref: int  # the job id or the run_call id
    submitted_at: datetime
    first_output_at: datetime | None
    finished_at: datetime | None
    status: str  # queued | running | succeeded | failed | cancelled | interrupted
    error: str | None
    cost_usd: float
    images: int

    @property
    def time_to_first_s(self) -> float | None:
        """Seconds from submission to the first stored output (None: no output landed after submission)."""
        if self.first_output_at is None or self.first_output_at < self.submitted_at:
            return None  # outputs reused from an earlier request landed before this one was made
        return (self.first_output_at - self.submitted_at).total_seconds()

    @property
    def time_to_all_s(self) -> float | None:
        """Seconds from submission to the end of a request that succeeded (None otherwise)."""
        if self.status != "succeeded" or self.finished_at is None:
            return None
        return max(0.0, (self.finished_at - self.submitted_at).total_seconds())


@dataclass(frozen=True)
class StudioImage:
    """A studio image: the mode it was drawn in and what the identity check said of it (None: not checked)."""

    asset_id: int
    character_id: int
    mode: str
    identity: str | None  # passed | drifted | not measurable | None
    engine: str
    model: str


@dataclass(frozen=True)
class Spend:
    """What one character committed, by area, against its budget (USD)."""

    character_id: int
    name: str
    budget_usd: float
    spent_usd: float  # the budget's own running total (reservations included)
    by_area: dict[str, float]


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands timestamps back without their zone; they were written in UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def call_cost(call: RunCall) -> float:
    """What a call cost: its bill once settled, else the reservation it still holds (it may bill)."""
    if call.status in MAY_BILL:
        return float(call.reserved_usd or 0.0)
    return float(call.billed_usd or 0.0)


def _most_common(values: Iterable[str | None]) -> str | None:
    counted = Counter(value for value in values if value)
    return counted.most_common(1)[0][0] if counted else None


def _trainer(payload: dict[str, Any]) -> tuple[str | None, str | None]:
    """A training job's trainer and base model, as its payload asked (a chain keeps them in `options`)."""
    nested = payload.get("options")
    options: dict[str, Any] = nested if isinstance(nested, dict) else payload
    asked = options.get("training")
    training: dict[str, Any] = asked if isinstance(asked, dict) else {}
    trainer = options.get("trainer") if isinstance(options.get("trainer"), str) else None
    model = training.get("base_model") if isinstance(training.get("base_model"), str) else None
    return trainer or "local", model


def _character_filter(column: Any, character_ids: frozenset[int] | None) -> ColumnElement[bool] | None:
    if character_ids is None:
        return None
    return column.in_(sorted(character_ids))


def load_requests(
    session: Session, since: datetime | None = None, character_ids: frozenset[int] | None = None
) -> list[Request]:
    """Every request submitted at or after `since` (all when None), of the given characters (all when None),
    oldest first."""
    return sorted(
        [*_job_requests(session, since, character_ids), *_direct_requests(session, since, character_ids)],
        key=lambda request: (request.submitted_at, request.source, request.ref),
    )


def _job_requests(
    session: Session, since: datetime | None, character_ids: frozenset[int] | None
) -> list[Request]:
    query = select(Job).where(Job.kind.in_(sorted(JOB_AREAS)))
    if since is not None:
        query = query.where(Job.created_at >= since)
    if (only := _character_filter(Job.character_id, character_ids)) is not None:
        query = query.where(only)
    jobs = session.scalars(query.order_by(Job.id)).all()
    if not jobs:
        return []
    ids = [job.id for job in jobs]
    assets: dict[int, list[Any]] = {}
    for row in session.execute(
        select(Asset.job_id, Asset.created_at, Asset.provider, Asset.model).where(Asset.job_id.in_(ids))
    ):
        assets.setdefault(row.job_id, []).append(row)
    calls: dict[int, list[RunCall]] = {}
    for call in session.scalars(select(RunCall).where(RunCall.job_id.in_(ids)).order_by(RunCall.id)):
        assert call.job_id is not None
        calls.setdefault(call.job_id, []).append(call)
    run_ids = [r for job in jobs if isinstance(r := (job.result or {}).get("run"), int)]
    runs = {
        row.id: row
        for row in session.execute(
            select(TrainingRun.id, TrainingRun.trainer, TrainingRun.spec).where(TrainingRun.id.in_(run_ids))
        )
    }
    requests = []
    for job in jobs:
        area = JOB_AREAS[job.kind]
        outputs, job_calls = assets.get(job.id, []), calls.get(job.id, [])
        engine = _most_common(row.provider for row in outputs)
        model = _most_common(row.model for row in outputs)
        if area is Area.TRAINING:
            run = runs.get(int((job.result or {}).get("run") or 0))
            if run is not None:  # what the run was trained with
                engine, model = run.trainer, str((run.spec or {}).get("base_model") or "") or None
            else:  # it failed before its run was made: what the job asked for
                engine, model = _trainer(job.payload or {})
        engine = engine or (job_calls[-1].engine if job_calls else None)
        submitted = aware(job.created_at)
        assert submitted is not None
        landed = [aware(row.created_at) for row in outputs]
        fresh = [at for at in landed if at is not None and at >= submitted]
        requests.append(
            Request(
                area=area,
                engine=engine or NO_ENGINE,
                model=model or "",
                character_id=job.character_id,
                source="job",
                ref=job.id,
                submitted_at=submitted,
                first_output_at=min(fresh) if fresh else None,
                finished_at=aware(job.finished_at),
                status=job.status,
                error=job.error,
                cost_usd=sum(call_cost(call) for call in job_calls),
                images=len(outputs),
            )
        )
    return requests


def _direct_requests(
    session: Session, since: datetime | None, character_ids: frozenset[int] | None
) -> list[Request]:
    """Engine calls made outside any job: each is one request, in the area of the asset it stored. A call
    that failed before storing anything is counted in the area its request kind names (`error` says)."""
    query = select(RunCall).where(RunCall.job_id.is_(None), RunCall.key.not_like("%:train:%"))
    if since is not None:
        query = query.where(RunCall.created_at >= since)
    if (only := _character_filter(RunCall.character_id, character_ids)) is not None:
        query = query.where(only)
    calls = session.scalars(query.order_by(RunCall.id)).all()
    output_ids = sorted({int(i) for call in calls for i in (call.outputs or []) if isinstance(i, int)})
    assets = {
        row.id: row
        for row in session.execute(
            select(Asset.id, Asset.kind, Asset.model, Asset.attributes, Asset.created_at).where(
                Asset.id.in_(output_ids)
            )
        )
    }
    requests = []
    for call in calls:
        stored = [assets[i] for i in (call.outputs or []) if i in assets]
        if call.status in ("done", "failed"):
            status = "failed" if call.status == "failed" or (call.error and not stored) else "succeeded"
        else:
            status = "failed" if call.status in ("released", "abandoned") else "running"
        area = _area_of_direct_call(stored[0]) if stored else _area_of_failed_call(call.error)
        if area is None:
            continue  # not a request of its own (one image of a stage run outside a job), or no outcome
        submitted, finished = aware(call.created_at), aware(call.updated_at)
        assert submitted is not None
        landed = [aware(row.created_at) for row in stored]
        requests.append(
            Request(
                area=area,
                engine=call.engine or NO_ENGINE,
                model=_most_common(row.model for row in stored) or "",
                character_id=call.character_id,
                source="call",
                ref=call.id,
                submitted_at=submitted,
                first_output_at=min((at for at in landed if at is not None), default=None),
                finished_at=finished if status != "running" else None,
                status=status,
                error=call.error if status == "failed" else None,
                cost_usd=call_cost(call),
                images=len(stored),
            )
        )
    return requests


# A direct call is a whole request only where one call makes everything the user asked for: an edit, an
# upscale, a studio generation. One image of a set (base images, profile set, sheet, enrichment) drawn by a
# stage outside a job is not: that stage's time-to-all was never recorded, so it is not counted as one.
DIRECT_AREAS = {"edited": Area.EDIT, "upscaled": Area.UPSCALE, "generated": Area.STUDIO_GENERATE}


def _area_of_direct_call(output: Any) -> Area | None:
    """A direct call's area from the first asset it stored (its kind, and its stage for generated images)."""
    area = DIRECT_AREAS.get(output.kind)
    stage = (output.attributes or {}).get("stage")
    if area is Area.STUDIO_GENERATE and stage not in (None, "studio"):
        return None
    return area


REQUEST_KIND_AREAS = {
    "upscale": Area.UPSCALE,
    "inpaint": Area.EDIT,
    "image_to_image": Area.EDIT,
    "text_to_image": Area.STUDIO_GENERATE,
    "identity_reference": Area.STUDIO_GENERATE,
}


def _area_of_failed_call(error: str | None) -> Area | None:
    """A failed direct call's area from the request kind its recorded error starts with (`upscale: …`)."""
    if not error:
        return None
    kind = error.split(":", 1)[0].strip()
    return REQUEST_KIND_AREAS.get(kind)


def load_studio_images(
    session: Session, since: datetime | None = None, character_ids: frozenset[int] | None = None
) -> list[StudioImage]:
    """The studio's images (attributes.stage == "studio") made at or after `since`, with their mode."""
    query = select(
        Asset.id, Asset.character_id, Asset.attributes, Asset.provider, Asset.model, Asset.kind
    ).where(Asset.kind == "generated")
    if since is not None:
        query = query.where(Asset.created_at >= since)
    if (only := _character_filter(Asset.character_id, character_ids)) is not None:
        query = query.where(only)
    images = []
    for row in session.execute(query.order_by(Asset.id)):
        attributes = row.attributes or {}
        if attributes.get("stage") != "studio":
            continue
        identity = attributes.get("identity")
        images.append(
            StudioImage(
                asset_id=row.id,
                character_id=row.character_id,
                mode=str(attributes.get("mode") or "text"),
                identity=identity if isinstance(identity, str) else None,
                engine=row.provider or NO_ENGINE,
                model=row.model or "",
            )
        )
    return images


def load_spend(session: Session, character_ids: frozenset[int] | None = None) -> list[Spend]:
    """Each character's committed money by area, over its whole life (caps are per character, not per week)."""
    query = select(Character.id, Character.name, Character.budget_usd, Character.spent_usd)
    if (only := _character_filter(Character.id, character_ids)) is not None:
        query = query.where(only)
    characters = session.execute(query.order_by(Character.id)).all()
    if not characters:
        return []
    ids = [row.id for row in characters]
    calls = session.scalars(select(RunCall).where(RunCall.character_id.in_(ids))).all()
    job_ids = sorted({call.job_id for call in calls if call.job_id is not None})
    job_kinds = {
        row.id: row.kind for row in session.execute(select(Job.id, Job.kind).where(Job.id.in_(job_ids)))
    }
    output_ids = sorted({int(i) for call in calls for i in (call.outputs or []) if isinstance(i, int)})
    asset_kinds = {
        row.id: row.kind
        for row in session.execute(select(Asset.id, Asset.kind).where(Asset.id.in_(output_ids)))
    }
    by_character: dict[int, dict[str, float]] = {i: {} for i in ids}
    for call in calls:
        cost = call_cost(call)
        if cost <= 0 or call.character_id is None:
            continue
        area: str = "other"
        if ":train:" in call.key:
            area = Area.TRAINING.value
        elif call.job_id is not None and job_kinds.get(call.job_id) in JOB_AREAS:
            area = JOB_AREAS[job_kinds[call.job_id]].value
        elif call.outputs and asset_kinds.get(call.outputs[0]) in ASSET_AREAS:
            area = ASSET_AREAS[asset_kinds[call.outputs[0]]].value
        spent = by_character[call.character_id]
        spent[area] = spent.get(area, 0.0) + cost
    return [
        Spend(
            character_id=row.id,
            name=row.name,
            budget_usd=float(row.budget_usd),
            spent_usd=float(row.spent_usd or 0.0),
            by_area=by_character[row.id],
        )
        for row in characters
    ]


def owned_characters(session: Session, owner_id: int) -> frozenset[int]:
    """The ids of a user's characters (what GET /stats shows a user who is not an operator)."""
    return frozenset(session.scalars(select(Character.id).where(Character.owner_id == owner_id)))
