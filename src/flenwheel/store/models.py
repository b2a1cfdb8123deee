"""SQLAlchemy 2 models. The schema is created and changed only by the Alembic migrations beside this file."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class User(Base):
    """Someone who owns characters through the HTTP API. Only a hash of the API token is stored."""

    __tablename__ = "api_user"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Set by `flenwheel user revoke NAME`: the token answers 401 from then on; the user's data stays.
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    # An operator reads every user's metrics (GET /stats, GET /metrics); their own data stays theirs alone.
    operator: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Character(Base):
    __tablename__ = "character"
    # Names are unique per owner (another user's names must not show through a 409); ids are never reused.
    __table_args__ = (
        UniqueConstraint("owner_id", "name", name="uq_character_owner_name"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # None = made from the CLI (the local user); the API only shows a user their own characters.
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("api_user.id"), default=None, index=True)
    # The wizard's character spec (appearance and identity fields, seed 000); {} for photo-made characters.
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    # The LoRA the studio uses (chosen by evaluation or by hand); None = identity-reference mode.
    active_checkpoint_id: Mapped[int | None] = mapped_column(Integer, default=None)
    active_lora_strength: Mapped[float | None] = mapped_column(Float, default=None)
    name: Mapped[str] = mapped_column(String(64))
    token: Mapped[str] = mapped_column(String(48))
    class_word: Mapped[str] = mapped_column(String(32))
    nsfw: Mapped[bool] = mapped_column(Boolean, default=False)
    budget_usd: Mapped[float] = mapped_column(Float, default=5.0)
    # Money committed so far: reserved atomically before each paid submission, settled after.
    spent_usd: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    caption_template: Mapped[str | None] = mapped_column(Text, default=None)
    # The character sheet (pipeline/sheet.py SheetConfig as JSON); NULL = never edited, the defaults apply.
    # In the store, not a file, so a worker on any host reads the same sheet.
    sheet: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    assets: Mapped[list[Asset]] = relationship(back_populates="character")


class Asset(Base):
    """One image with its provenance. `sha256` names the stored (normalised) blob."""

    __tablename__ = "asset"
    __table_args__ = (UniqueConstraint("character_id", "source_sha256", name="uq_asset_source"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    character_id: Mapped[int] = mapped_column(ForeignKey("character.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    source_sha256: Mapped[str] = mapped_column(String(64))
    source_name: Mapped[str] = mapped_column(Text, default="")
    format: Mapped[str] = mapped_column(String(8))  # file extension of the stored blob: jpg, png, webp
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    is_reference: Mapped[bool] = mapped_column(Boolean, default=False)
    normalised: Mapped[list[Any]] = mapped_column(default=list)  # what decoding changed (EXIF, CMYK, …)
    caption: Mapped[str | None] = mapped_column(Text, default=None)
    caption_edited: Mapped[bool] = mapped_column(Boolean, default=False)
    parents: Mapped[list[Any]] = mapped_column(default=list)
    prompt: Mapped[str | None] = mapped_column(Text, default=None)
    negative: Mapped[str | None] = mapped_column(Text, default=None)
    seed: Mapped[int | None] = mapped_column(BigInteger, default=None)  # 0 … 2³²−1 does not fit PG's INTEGER
    provider: Mapped[str | None] = mapped_column(String(64), default=None)
    model: Mapped[str | None] = mapped_column(Text, default=None)
    loras: Mapped[list[Any]] = mapped_column(default=list)
    denoise: Mapped[float | None] = mapped_column(Float, default=None)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    timings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    nsfw_score: Mapped[float | None] = mapped_column(Float, default=None)
    # Where the asset sits in the pipeline: {"stage": "anchor", "anchor": "front", "picked": true}, …
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    job_id: Mapped[int | None] = mapped_column(Integer, default=None, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    character: Mapped[Character] = relationship(back_populates="assets")
    analysis: Mapped[Analysis | None] = relationship(back_populates="asset", uselist=False)
    reviews: Mapped[list[Review]] = relationship(back_populates="asset", order_by="Review.id")


class Analysis(Base):
    """Cached derived facts of an asset (quality, faces, angle, shot); never recomputed once stored."""

    __tablename__ = "analysis"

    asset_id: Mapped[int] = mapped_column(ForeignKey("asset.id", ondelete="CASCADE"), primary_key=True)
    analyzer: Mapped[str] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    asset: Mapped[Asset] = relationship(back_populates="analysis")


class Review(Base):
    """A review label. The newest user label wins; else the newest gate suggestion."""

    __tablename__ = "review"

    id: Mapped[int] = mapped_column(primary_key=True)
    asset_id: Mapped[int] = mapped_column(ForeignKey("asset.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(24))
    reason: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[str] = mapped_column(String(8))
    identity_distance: Mapped[float | None] = mapped_column(Float, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    asset: Mapped[Asset] = relationship(back_populates="reviews")


class IngestRejection(Base):
    """A file that could not become an asset, kept so every rejection stays explained."""

    __tablename__ = "ingest_rejection"

    id: Mapped[int] = mapped_column(primary_key=True)
    character_id: Mapped[int] = mapped_column(ForeignKey("character.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DatasetVersion(Base):
    """An immutable snapshot of the good images: v1, v2, … with lineage to the previous version."""

    __tablename__ = "dataset_version"
    __table_args__ = (UniqueConstraint("character_id", "number", name="uq_dataset_number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    character_id: Mapped[int] = mapped_column(ForeignKey("character.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("dataset_version.id"), default=None)
    composition: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    items: Mapped[list[DatasetItem]] = relationship(order_by="DatasetItem.position")

    @property
    def label(self) -> str:
        return f"v{self.number}"


class DatasetItem(Base):
    """One image of a dataset version, with its caption and facts frozen at build time."""

    __tablename__ = "dataset_item"

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_version_id: Mapped[int] = mapped_column(
        ForeignKey("dataset_version.id", ondelete="CASCADE"), index=True
    )
    asset_id: Mapped[int] = mapped_column(ForeignKey("asset.id"))
    position: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    caption: Mapped[str] = mapped_column(Text)
    angle: Mapped[str | None] = mapped_column(String(24))
    shot: Mapped[str | None] = mapped_column(String(16))
    expression: Mapped[str | None] = mapped_column(String(16))
    quality: Mapped[str] = mapped_column(String(8))


class RunCall(Base):
    """One call of a run to an engine or trainer: its budget reservation and its remote id, in one row.

    `key` is the engine plus a fingerprint of the request (or of the training run): a retry of the same
    request finds the row, resumes the remote job by `remote_id` instead of paying twice, and keeps the
    reservation. Status: reserved → submitted (accepted; may bill) → done (settled) | released (never
    accepted; money back) | abandoned (accepted, then failed or cancelled: the reservation stays) | failed
    (the engine failed it for good; billed $0). `created_at` is when the call (its latest attempt) began,
    `updated_at` when it last changed (settled, failed); `error` keeps an engine's failure for the metrics.
    """

    __tablename__ = "run_call"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(160), unique=True)
    engine: Mapped[str] = mapped_column(String(64))
    character_id: Mapped[int | None] = mapped_column(
        ForeignKey("character.id", ondelete="CASCADE"), default=None, index=True
    )
    job_id: Mapped[int | None] = mapped_column(Integer, default=None, index=True)
    status: Mapped[str] = mapped_column(String(16), default="reserved")
    remote_id: Mapped[str | None] = mapped_column(Text, default=None)
    reserved_usd: Mapped[float] = mapped_column(Float, default=0.0)
    billed_usd: Mapped[float | None] = mapped_column(Float, default=None)
    outputs: Mapped[list[Any]] = mapped_column(default=list)  # asset ids stored by the call, when done
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TrainingRun(Base):
    """One LoRA training of a dataset version through one trainer; its checkpoints and loss log."""

    __tablename__ = "training_run"
    __table_args__ = {"sqlite_autoincrement": True}  # run ids name folders: never reused

    id: Mapped[int] = mapped_column(primary_key=True)
    character_id: Mapped[int] = mapped_column(ForeignKey("character.id", ondelete="CASCADE"), index=True)
    # A character LoRA is trained from a dataset version; an editor LoRA (flywheel 2) from a correction set.
    dataset_version_id: Mapped[int | None] = mapped_column(ForeignKey("dataset_version.id"), default=None)
    correction_set_id: Mapped[int | None] = mapped_column(ForeignKey("correction_set.id"), default=None)
    trainer: Mapped[str] = mapped_column(String(32))
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Hash of trainer + spec: running `train` again with the same settings resumes the unfinished run.
    fingerprint: Mapped[str] = mapped_column(String(32), default="")
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    status: Mapped[str] = mapped_column(
        String(16), default="pending"
    )  # pending|running|succeeded|failed|cancelled
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer, default=0)
    losses: Mapped[list[Any]] = mapped_column(default=list)  # [[step, loss], …]
    remote_id: Mapped[str | None] = mapped_column(
        Text, default=None
    )  # fal request id / Replicate training id
    work_dir: Mapped[str] = mapped_column(Text, default="")  # relative to the project folder
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)

    checkpoints: Mapped[list[Checkpoint]] = relationship(order_by="Checkpoint.step")

    @property
    def label(self) -> str:
        return f"run{self.id}"


class Checkpoint(Base):
    """A LoRA file saved during a run (kohya keys, ss_* and modelspec.* metadata), relative to the project."""

    __tablename__ = "checkpoint"
    __table_args__ = (UniqueConstraint("run_id", "step", name="uq_checkpoint_step"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("training_run.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[int | None] = mapped_column(Integer, default=None)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Evaluation(Base):
    """Checkpoint × strength × fixed prompts, scored; the selection and why it was made."""

    __tablename__ = "evaluation"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("training_run.id", ondelete="CASCADE"), index=True)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)  # strengths, prompts, seeds, size, steps
    status: Mapped[str] = mapped_column(String(16), default="pending")
    summary: Mapped[list[Any]] = mapped_column(default=list)  # one row per checkpoint × strength
    selected_checkpoint_id: Mapped[int | None] = mapped_column(Integer, default=None)
    selected_strength: Mapped[float | None] = mapped_column(Float, default=None)
    reason: Mapped[str] = mapped_column(Text, default="")
    advice: Mapped[list[Any]] = mapped_column(default=list)
    report_path: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class EvaluationSample(Base):
    """One scored image of an evaluation grid. Unique per cell and prompt, so an evaluation resumes."""

    __tablename__ = "evaluation_sample"
    __table_args__ = (
        UniqueConstraint(
            "evaluation_id", "checkpoint_id", "strength", "prompt_key", name="uq_evaluation_cell"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluation.id", ondelete="CASCADE"), index=True)
    checkpoint_id: Mapped[int] = mapped_column(ForeignKey("checkpoint.id", ondelete="CASCADE"))
    strength: Mapped[float] = mapped_column(Float)
    prompt_key: Mapped[str] = mapped_column(String(48))
    prompt: Mapped[str] = mapped_column(Text)
    seed: Mapped[int] = mapped_column(BigInteger)
    asset_id: Mapped[int | None] = mapped_column(ForeignKey("asset.id"), default=None)
    face_found: Mapped[bool] = mapped_column(Boolean, default=False)
    identity_distance: Mapped[float | None] = mapped_column(Float, default=None)
    near_copy: Mapped[bool] = mapped_column(Boolean, default=False)
    nsfw_score: Mapped[float | None] = mapped_column(Float, default=None)
    adherence: Mapped[float | None] = mapped_column(Float, default=None)  # None = not measured


class CorrectionTriplet(Base):
    """Seed 001 step 2.1: an image that needed correction, as (source, edit instruction, corrected target).

    `flawed_asset_id` is the output a person labelled needs_correction; `source_asset_id` the image it was made
    from (its parent; the flawed image itself when it has none); `target_asset_id` the corrected image (an upload
    or a redone edit) — None until one is attached. Dropped triplets stay on record (`dropped`)."""

    __tablename__ = "correction_triplet"
    __table_args__ = (UniqueConstraint("flawed_asset_id", name="uq_correction_flawed"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    character_id: Mapped[int] = mapped_column(ForeignKey("character.id", ondelete="CASCADE"), index=True)
    flawed_asset_id: Mapped[int] = mapped_column(ForeignKey("asset.id", ondelete="CASCADE"))
    source_asset_id: Mapped[int] = mapped_column(ForeignKey("asset.id", ondelete="CASCADE"))
    target_asset_id: Mapped[int | None] = mapped_column(
        ForeignKey("asset.id", ondelete="SET NULL"), default=None
    )
    instruction: Mapped[str] = mapped_column(Text, default="")
    issue: Mapped[str] = mapped_column(Text, default="")
    improvement: Mapped[str] = mapped_column(Text, default="")
    dropped: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CorrectionSet(Base):
    """An immutable snapshot of a character's complete correction triplets: c1, c2, … (seed 001 step 2.2's
    training input). `items` freezes each triplet's blobs and texts at build time."""

    __tablename__ = "correction_set"
    __table_args__ = (UniqueConstraint("character_id", "number", name="uq_correction_set_number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    character_id: Mapped[int] = mapped_column(ForeignKey("character.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    items: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    @property
    def label(self) -> str:
        return f"c{self.number}"


class Job(Base):
    """A unit of background work. The source of truth for status and progress on every job backend.

    The embedded backend claims rows from this table; the Procrastinate backend only delivers `id` to a
    worker, which then updates this row. `external_ids` keeps remote ids so a retried job resumes.
    """

    __tablename__ = "job"
    __table_args__ = {"sqlite_autoincrement": True}  # job ids are a chain's root: never reused

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(48))
    queue: Mapped[str] = mapped_column(String(16), default="cpu")  # gpu | cpu | api
    priority: Mapped[int] = mapped_column(Integer, default=0)  # higher runs first
    # queued | running | succeeded | failed | cancelled | interrupted
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    character_id: Mapped[int | None] = mapped_column(
        ForeignKey("character.id", ondelete="CASCADE"), default=None, index=True
    )
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("api_user.id"), default=None)
    parent_id: Mapped[int | None] = mapped_column(Integer, default=None, index=True)
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker: Mapped[str | None] = mapped_column(String(128), default=None)
    # The running worker's last sign of life; nothing else.
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    # A queued row is not claimed before this moment (a transient failure's backoff); None = at once.
    run_after: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    external_ids: Mapped[dict[str, Any]] = mapped_column(default=dict)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class FlywheelRound(Base):
    """One round of flywheel 1 (seed 001 steps 1.5–1.8): generate → filter → review → v(N+1) → retrain →
    compare. `stage` is the last stage finished, so a resumed round continues after it; `record` holds each
    stage's outcome (pipeline/flywheel.py RoundRecord)."""

    __tablename__ = "flywheel_round"
    __table_args__ = (UniqueConstraint("character_id", "number", name="uq_flywheel_round_number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    character_id: Mapped[int] = mapped_column(ForeignKey("character.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[int | None] = mapped_column(Integer, default=None)
    stage: Mapped[str] = mapped_column(String(16), default="planned")
    status: Mapped[str] = mapped_column(String(16), default="running")  # running|review|finished|failed
    record: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
