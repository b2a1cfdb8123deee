"""Ingest: take files and folders into the project as source assets, one file at a time, explaining every refusal."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from flenwheel.datasets.subsets import Subset
from flenwheel.domain import AssetKind
from flenwheel.errors import ImageRejected
from flenwheel.images import MAX_FILE_BYTES, decode_image, encode_png
from flenwheel.store.models import Asset, IngestRejection
from flenwheel.store.project import Project, get_character

# Formats kept byte-for-byte when decoding changed nothing; everything else is stored as PNG.
_KEPT_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


@dataclass(frozen=True)
class IngestOutcome:
    """What happened to one file: `added`, `duplicate` (same bytes already ingested) or `rejected`."""

    path: str
    status: str
    asset_id: int | None = None
    reason: str | None = None
    detail: str | None = None


def printable_path(path: Path | str) -> str:
    """A path as text that any database accepts: undecodable bytes in a name become U+FFFD."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def expand_paths(paths: Iterable[Path]) -> Iterator[tuple[Path, str]]:
    """(file, display name) pairs: files as given, folders recursively in sorted order, named relative to the
    folder's parent (`lisa/1.jpg`); hidden files and folders are skipped."""
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                relative = child.relative_to(path)
                if any(part.startswith(".") for part in relative.parts):
                    continue
                if child.is_file():
                    yield child, printable_path(Path(path.resolve().name) / relative)
        else:
            yield (
                path,
                printable_path(path.name),
            )  # a missing path is reported by ingest_file, not silently dropped


def ingest(
    project: Project,
    character_name: str,
    paths: Iterable[Path],
    reference: bool = False,
    on_file: Callable[[IngestOutcome], None] | None = None,
    subset: Subset | None = None,
) -> list[IngestOutcome]:
    """Ingest every file; a bad file is recorded with its reason and the batch goes on. `subset`: the dataset
    subset the photos belong to (datasets/subsets.py), e.g. seed 002's face-less body photos."""
    with project.db.session() as session:
        character_id = get_character(session, character_name).id
    outcomes = []
    for path, display_name in expand_paths(paths):
        outcome = ingest_file(project, character_id, path, display_name, reference, subset)
        outcomes.append(outcome)
        if on_file is not None:
            on_file(outcome)
    return outcomes


def ingest_file(
    project: Project,
    character_id: int,
    path: Path,
    display_name: str,
    reference: bool,
    subset: Subset | None = None,
) -> IngestOutcome:
    shown = printable_path(path)
    try:
        size = path.stat().st_size
        if not path.is_file():  # a device, pipe or socket (/dev/zero would never end)
            return _reject(project, character_id, shown, "not_a_file", "not a regular file")
        if size > MAX_FILE_BYTES:
            return _reject(
                project,
                character_id,
                shown,
                "too_large",
                f"the file is {size // 2**20} MiB; the limit is 80 MiB",
            )
        data = path.read_bytes()
    except FileNotFoundError:
        return _reject(project, character_id, shown, "missing", "no such file: check the path")
    except OSError as exc:
        return _reject(project, character_id, shown, "unreadable", f"cannot read the file ({exc.strerror})")
    return ingest_bytes(project, character_id, data, shown, display_name, reference, subset)


def ingest_bytes(
    project: Project,
    character_id: int,
    data: bytes,
    shown: str,
    display_name: str,
    reference: bool,
    subset: Subset | None = None,
) -> IngestOutcome:
    """Take in one file's bytes (already read, e.g. an HTTP upload) with the same checks as a file on disk."""
    source_sha256 = hashlib.sha256(data).hexdigest()
    with project.db.session() as session:
        existing = session.scalar(
            select(Asset).where(Asset.character_id == character_id, Asset.source_sha256 == source_sha256)
        )
        if existing is not None:
            if reference and not existing.is_reference:
                existing.is_reference = True
            if subset is not None and existing.attributes.get("subset") != subset.model_dump():
                existing.attributes = {**existing.attributes, "subset": subset.model_dump()}
            return IngestOutcome(shown, "duplicate", existing.id, "duplicate", "same bytes already ingested")
    try:
        decoded = decode_image(data)
    except ImageRejected as exc:
        return _reject(project, character_id, shown, exc.reason, exc.detail)
    extension = _KEPT_FORMATS.get(decoded.source_format)
    if decoded.notes or extension is None:
        stored, extension = encode_png(decoded.image), "png"
    else:
        stored = data
    sha256 = project.blobs.put(stored)
    with project.db.session() as session:
        asset = Asset(
            character_id=character_id,
            kind=AssetKind.SOURCE,
            sha256=sha256,
            source_sha256=source_sha256,
            source_name=display_name,
            format=extension,
            width=decoded.image.width,
            height=decoded.image.height,
            is_reference=reference,
            normalised=list(decoded.notes),
            attributes={"subset": subset.model_dump()} if subset is not None else {},
        )
        session.add(asset)
        try:
            session.flush()
        except IntegrityError:  # the same bytes arrived through a concurrent ingest
            session.rollback()
            winner = session.scalar(
                select(Asset.id).where(
                    Asset.character_id == character_id, Asset.source_sha256 == source_sha256
                )
            )
            return IngestOutcome(shown, "duplicate", winner, "duplicate", "same bytes already ingested")
        return IngestOutcome(shown, "added", asset.id, None, "; ".join(decoded.notes) or None)


def _reject(project: Project, character_id: int, path: str, reason: str, detail: str) -> IngestOutcome:
    """Record the refusal once per file: re-ingesting a folder does not list its broken files again."""
    with project.db.session() as session:
        known = session.scalar(
            select(IngestRejection).where(
                IngestRejection.character_id == character_id, IngestRejection.path == path
            )
        )
        if known is None:
            session.add(IngestRejection(character_id=character_id, path=path, reason=reason, detail=detail))
        else:
            known.reason, known.detail = reason, detail
    return IngestOutcome(path, "rejected", None, reason, detail)
