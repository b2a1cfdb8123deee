"""SQLAlchemy 2 models. The schema is created and changed only by the Alembic migrations beside this file."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Character(Base):
    __tablename__ = "character"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token: Mapped[str] = mapped_column(String(48))
    class_word: Mapped[str] = mapped_column(String(32))
    nsfw: Mapped[bool] = mapped_column(Boolean, default=False)
    budget_usd: Mapped[float] = mapped_column(Float, default=5.0)
    # Money committed so far: reserved atomically before each paid submission, settled after.
    spent_usd: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    caption_template: Mapped[str | None] = mapped_column(Text, default=None)
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
    seed: Mapped[int | None] = mapped_column(Integer, default=None)
    provider: Mapped[str | None] = mapped_column(String(64), default=None)
    model: Mapped[str | None] = mapped_column(Text, default=None)
    loras: Mapped[list[Any]] = mapped_column(default=list)
    denoise: Mapped[float | None] = mapped_column(Float, default=None)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    timings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    nsfw_score: Mapped[float | None] = mapped_column(Float, default=None)
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


class RemoteJob(Base):
    """An engine's job id, stored before waiting on it, so an interrupted request resumes instead of paying twice.

    `fingerprint` is a hash of the provider and the full request; re-running the same request finds it.
    """

    __tablename__ = "remote_job"

    id: Mapped[int] = mapped_column(primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    provider: Mapped[str] = mapped_column(String(64))
    remote_id: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | done | failed
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
