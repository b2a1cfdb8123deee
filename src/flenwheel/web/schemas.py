"""What the API reads and writes: `*Create` bodies, `*Public` responses, paged lists. Bodies forbid unknown
fields, so a misspelt field is a 422 naming it rather than a silently ignored setting."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from flenwheel.domain import ReviewLabel
from flenwheel.jobs.base import JobStatus, Queue

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
    prompt: str | None
    negative: str | None
    seed: int | None
    provider: str | None
    model: str | None
    loras: list[Any]
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


class JobCreate(Body):
    kind: str = Field(min_length=1, max_length=48, examples=["curate"], description="a registered job kind")
    character_id: int = Field(ge=1, le=2**31 - 1, description="one of your characters; the job works on it")
    payload: dict[str, Any] = Field(default_factory=dict, description="kind-specific settings")
    queue: Queue = Queue.CPU
    priority: int = Field(default=0, ge=-100, le=100, description="higher runs first")
    max_attempts: int = Field(default=3, ge=1, le=20)


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
