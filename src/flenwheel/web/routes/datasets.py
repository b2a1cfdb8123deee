"""Dataset versions: build one from the images labelled good, list them with their composition, read one
with its items, and download an export (kohya, ai-toolkit or the fal zip) as a zip file."""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from sqlalchemy import select
from sqlalchemy.orm import selectinload
from starlette.background import BackgroundTask

from flenwheel.datasets.export import ExportFormat, export_dataset
from flenwheel.datasets.versions import build_dataset_version
from flenwheel.store.models import DatasetVersion
from flenwheel.web.deps import OwnedCharacter, ProjectDep, SessionDep
from flenwheel.web.schemas import DatasetVersionDetail, DatasetVersionPublic

router = APIRouter(prefix="/characters/{character_id}/datasets", tags=["datasets"])

VersionNumber = Annotated[int, PathParam(ge=1, le=2**31 - 1, description="the version number: 1 for v1")]


def version_public(version: DatasetVersion, created: bool | None = None) -> DatasetVersionPublic:
    return DatasetVersionPublic(
        id=version.id,
        character_id=version.character_id,
        number=version.number,
        label=version.label,
        parent_id=version.parent_id,
        composition=version.composition,
        images=len(version.items),
        created_at=version.created_at,
        created=created,
    )


@router.post(
    "",
    summary="Build a dataset version",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetVersionPublic,
    responses={
        200: {"model": DatasetVersionPublic, "description": "the good set is unchanged: the latest version"}
    },
)
def build(ref: OwnedCharacter, project: ProjectDep, response: Response) -> DatasetVersionPublic:
    """Snapshot the images labelled good into a new immutable version (201); when nothing changed since the
    latest version, that version is returned (200) instead of a copy."""
    built = build_dataset_version(project, ref.key)
    if not built.created:
        response.status_code = status.HTTP_200_OK
    return version_public(built.version, built.created)


@router.get("", summary="List dataset versions", response_model=list[DatasetVersionPublic])
def list_versions(ref: OwnedCharacter, session: SessionDep) -> list[DatasetVersionPublic]:
    """Every version of the character's dataset, oldest first, with its composition report."""
    versions = session.scalars(
        select(DatasetVersion)
        .where(DatasetVersion.character_id == ref.id)
        .options(selectinload(DatasetVersion.items))
        .order_by(DatasetVersion.number)
    )
    return [version_public(version) for version in versions]


def _version(session: SessionDep, character_id: int, number: int) -> DatasetVersion:
    version = session.scalars(
        select(DatasetVersion)
        .where(DatasetVersion.character_id == character_id, DatasetVersion.number == number)
        .options(selectinload(DatasetVersion.items))
    ).first()
    if version is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail=f"character {character_id} has no dataset version v{number}: list them with "
            f"GET /characters/{character_id}/datasets, or build one with POST on the same path",
        )
    return version


@router.get("/{number}", summary="Get a dataset version", response_model=DatasetVersionDetail)
def get_version(ref: OwnedCharacter, number: VersionNumber, session: SessionDep) -> DatasetVersionDetail:
    """One version with its items (captions, angle, shot, expression, quality as frozen at build time)."""
    version = _version(session, ref.id, number)
    return DatasetVersionDetail.model_validate(
        {**version_public(version).model_dump(), "items": list(version.items)}
    )


@router.get(
    "/{number}/export",
    summary="Download an export as zip",
    response_class=FileResponse,
    responses={200: {"content": {"application/zip": {}}, "description": "the export as one zip file"}},
)
def export(
    ref: OwnedCharacter,
    number: VersionNumber,
    project: ProjectDep,
    session: SessionDep,
    export_format: Annotated[ExportFormat, Query(alias="format")] = ExportFormat.ZIP,
) -> FileResponse:
    """The version exported for a trainer, as a zip: `zip` (images + captions, what fal's trainers take,
    with metadata.json), `kohya` (img/ folders + dataset_config.toml) or `ai-toolkit` (dataset/ + config.yaml)."""
    _version(session, ref.id, number)
    work = Path(tempfile.mkdtemp(prefix="flenwheel-export-"))
    try:
        result = export_dataset(project, ref.key, export_format, work / "export", version_number=number)
        archive = work / f"{ref.name}_v{number}_{export_format.value}.zip"
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as out:
            for path in sorted(result.out.rglob("*")):
                if export_format == ExportFormat.ZIP and path.suffix == ".zip":
                    _merge_zip(
                        path, out
                    )  # fal's zip: its images and captions at the top, beside metadata.json
                elif path.is_file():
                    out.write(path, path.relative_to(result.out).as_posix())
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return FileResponse(
        archive,
        media_type="application/zip",
        filename=archive.name,
        background=BackgroundTask(shutil.rmtree, work, ignore_errors=True),
    )


def _merge_zip(source: Path, out: zipfile.ZipFile) -> None:
    with zipfile.ZipFile(source) as inner:
        for entry in inner.infolist():
            out.writestr(entry.filename, inner.read(entry))
