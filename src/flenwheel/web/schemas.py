"""What the API reads and writes: `*Create` bodies, `*Public` responses, paged lists. Bodies forbid unknown
fields, so a misspelt field is a 422 naming it rather than a silently ignored setting."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from flenwheel.domain import ReviewLabel
from flenwheel.jobs.base import JobStatus
from flenwheel.jobs.kinds import KindInfo

T = TypeVar("T")


class Body(BaseModel):
    """A request body: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid")


class Public(BaseModel):
    """A response model, filled from ORM rows or value objects."""

    model_config = ConfigDict(from_attributes=True)


class Page(Public, Generic[T]):
    """One page of a list: `items`, how many match in all (`total`), and where this page starts."""

    items: list[T]
    total: int = Field(description="how many items match the filters, over all pages")
    limit: int
    offset: int


class ErrorPublic(BaseModel):
    """Every error response: what is wrong and how to fix it."""

    detail: str
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="field errors of a 422, one per field"
    )


# -- users ---------------------------------------------------------------------------------------------


class UserPublic(Public):
    id: int
    name: str


# -- characters ----------------------------------------------------------------------------------------


class CharacterBase(Body):
    name: str = Field(min_length=1, max_length=64, examples=["lisa"])
    nsfw: bool | None = Field(
        default=None, description="allow NSFW generation (default: the spec's nsfw_allowed, else false)"
    )
    budget_usd: float = Field(
        default=5.0, ge=0, le=10_000, description="money the background chain may spend"
    )
    caption_template: str | None = Field(default=None, max_length=500)


class CharacterCreate(CharacterBase):
    token: str | None = Field(
        default=None, examples=["ohwx_lisa"], description="trigger word; default: derived from the spec"
    )
    class_word: str | None = Field(
        default=None, examples=["woman"], description="class word; default: derived from the spec"
    )
    spec: dict[str, Any] | None = Field(
        default=None,
        description="the wizard's character spec (appearance and identity fields: gender_presentation, age_range, "
        "hair_colour, …); `name` defaults to the character's name",
        examples=[{"gender_presentation": "woman", "age_range": "25-30", "hair_colour": "auburn"}],
    )


class CharacterPublic(Public):
    id: int
    name: str
    token: str
    class_word: str
    nsfw: bool
    budget_usd: float
    spent_usd: float
    caption_template: str | None
    spec: dict[str, Any]
    active_checkpoint_id: int | None
    active_lora_strength: float | None
    created_at: datetime
    assets: int = Field(default=0, description="how many assets the character has")


class CharacterPage(Page[CharacterPublic]):
    pass


# -- assets --------------------------------------------------------------------------------------------


class AssetPublic(Public):
    id: int
    character_id: int
    kind: str
    sha256: str
    source_name: str
    format: str
    width: int
    height: int
    is_reference: bool
    caption: str | None
    label: ReviewLabel | None = Field(
        description="the current review label: the newest user label, else curate's"
    )
    label_reason: str | None = None
    attributes: dict[str, Any]
    parents: list[Any]
    children: list[int] = Field(
        default_factory=list, description="the assets made from this one (edits, upscales, corrections)"
    )
    prompt: str | None
    negative: str | None
    seed: int | None
    provider: str | None
    model: str | None
    loras: list[Any] = Field(description="each LoRA by file name and strength (never a path on the server)")
    denoise: float | None
    cost_usd: float
    nsfw_score: float | None
    job_id: int | None
    created_at: datetime
    analysis: dict[str, Any] | None = Field(
        default=None, description="quality, faces, angle, shot (after curate)"
    )
    image_url: str = Field(description="where the image bytes are: GET it with the same token")


class AssetPage(Page[AssetPublic]):
    pass


class UploadResult(BaseModel):
    """What happened to one uploaded file: `added`, `duplicate` (same bytes already taken in) or `rejected`."""

    filename: str
    status: Literal["added", "duplicate", "rejected"]
    asset_id: int | None = None
    reason: str | None = Field(
        default=None, description="machine-stable rejection code, as `flenwheel ingest` gives"
    )
    detail: str | None = None


class UploadReport(BaseModel):
    results: list[UploadResult]
    added: int
    duplicates: int
    rejected: int


# -- reviews -------------------------------------------------------------------------------------------


class ReviewCreate(Body):
    label: ReviewLabel
    reason: str = Field(default="", max_length=2000, description="required for needs_correction and reject")


class FlywheelRoundPublic(Public):
    """One round of flywheel 1 (pipeline/flywheel.py): the stage it reached and its record — coverage, prompts
    and seeds, candidates, filter numbers, who labelled what, the dataset version, run, evaluations, comparison."""

    number: int
    status: str  # running | review | stopped | finished
    stage: str
    record: dict[str, Any]
    created_at: datetime
    finished_at: datetime | None


class ReviewPublic(Public):
    id: int
    asset_id: int
    label: str
    reason: str
    source: str
    identity_distance: float | None
    created_at: datetime


class CaptionUpdate(Body):
    caption: str = Field(min_length=1, max_length=2000)


# -- datasets ------------------------------------------------------------------------------------------


class DatasetItemPublic(Public):
    asset_id: int
    position: int
    sha256: str
    caption: str
    angle: str | None
    shot: str | None
    expression: str | None
    quality: str


class DatasetVersionPublic(Public):
    id: int
    character_id: int
    number: int
    label: str = Field(description="v1, v2, …")
    parent_id: int | None
    composition: dict[str, Any] = Field(
        description="counts by shot/angle/expression and the seed targets, met or not"
    )
    images: int
    created_at: datetime
    created: bool | None = Field(default=None, description="on build: false when the good set was unchanged")


class DatasetVersionDetail(DatasetVersionPublic):
    items: list[DatasetItemPublic]


# -- jobs ----------------------------------------------------------------------------------------------


PRIORITY_RULE = (
    "0 (the default) or lower: a lower priority defers this job behind your other jobs. Over the API a job "
    "can never be put ahead of other users' jobs, so priority only orders your own work"
)


class JobCreate(Body):
    """What every job submission has; each kind adds its `kind` tag and its typed `payload`
    (`job_create_body` makes the discriminated union over the kinds the server accepts)."""

    character_id: int = Field(ge=1, le=2**31 - 1, description="one of your characters; the job works on it")
    priority: int = Field(default=0, ge=-100, le=0, description=PRIORITY_RULE)
    max_attempts: int = Field(default=3, ge=1, le=20)


def api_payload_model(payload: type[BaseModel]) -> type[BaseModel]:
    """A kind's payload model as API users send it: `character` is filled in from `character_id`."""
    fields: Any = {
        "character": (
            str | None,
            Field(default=None, max_length=64, description="leave out: filled in from character_id"),
        )
    }
    return create_model(payload.__name__, __base__=payload, __module__=payload.__module__, **fields)


def job_create_body(kinds: list[KindInfo]) -> Any:
    """The POST /jobs body: one model per kind the server accepts, told apart by `kind` (a discriminated union
    that the OpenAPI document shows in full, so clients and the fuzz test see every kind's payload)."""
    models = []
    for info in kinds:
        assert info.payload is not None
        payload = api_payload_model(info.payload)
        try:
            payload.model_validate({})
            default: Any = Field(default_factory=payload)
        except ValidationError:
            default = Field(description="required: this kind has settings without defaults")
        fields: Any = {"kind": (Literal[info.name], ...), "payload": (payload, default)}
        name = "".join(part.title() for part in info.name.split("_")) + "JobCreate"
        models.append(create_model(name, __base__=JobCreate, __module__=__name__, **fields))
    return Annotated[Union[tuple(models)], Field(discriminator="kind")]  # noqa: UP007


class JobPublic(Public):
    id: int
    kind: str
    queue: str
    priority: int
    status: JobStatus
    payload: dict[str, Any]
    result: dict[str, Any]
    character_id: int | None
    parent_id: int | None
    progress_done: int
    progress_total: int
    message: str
    error: str | None
    attempts: int
    max_attempts: int
    cancel_requested: bool
    cost_usd: float
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobPage(Page[JobPublic]):
    pass


class HealthPublic(BaseModel):
    status: Literal["ok"]
    version: str
    job_workers: int = Field(
        description="embedded job worker threads in this server (0: jobs wait for `flenwheel worker`)"
    )
