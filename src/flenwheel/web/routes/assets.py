"""Assets: list a character's images with filters and paging, read one, download its bytes, upload new ones.

Uploads go through the same checks as `flenwheel ingest` (datasets/ingest.py), so a file is refused for the
same reasons with the same codes; a batch goes on past a bad file and reports every file."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, Response, UploadFile, status
from sqlalchemy import ColumnElement, and_, func, select
from sqlalchemy.orm import selectinload

from flenwheel.datasets.ingest import IngestOutcome, ingest_bytes, printable_path
from flenwheel.domain import AssetKind, ReviewLabel, ReviewSource
from flenwheel.store.models import Asset, Review
from flenwheel.store.project import Project
from flenwheel.web.deps import OwnedAsset, OwnedCharacter, ProjectDep, SessionDep
from flenwheel.web.limits import MAX_FILES_PER_UPLOAD
from flenwheel.web.schemas import AssetPage, AssetPublic, ErrorPublic, UploadReport, UploadResult

router = APIRouter(tags=["assets"])

MIME_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
CHUNK = 1 << 20


def _newest_label(source: ReviewSource) -> Any:
    return (
        select(Review.label)
        .where(Review.asset_id == Asset.id, Review.source == source.value)
        .order_by(Review.id.desc())
        .limit(1)
        .correlate(Asset)
        .scalar_subquery()
    )


def current_label() -> ColumnElement[Any]:
    """The current review label in SQL: the newest user label, else the newest curate suggestion."""
    return func.coalesce(
        _newest_label(ReviewSource.USER), _newest_label(ReviewSource.POLICY), _newest_label(ReviewSource.GATE)
    )


def asset_public(asset: Asset, children: list[int] | None = None) -> AssetPublic:
    review = _current_review(asset)
    fields = {column.key: getattr(asset, column.key) for column in Asset.__table__.columns}
    return AssetPublic.model_validate(
        {
            **fields,
            "loras": [_lora_public(lora) for lora in asset.loras or []],
            "children": children or [],
            "label": review.label if review else None,
            "label_reason": review.reason if review else None,
            "analysis": asset.analysis.data if asset.analysis is not None else None,
            "image_url": f"/assets/{asset.id}/image",
        }
    )


def _lora_public(lora: Any) -> Any:
    """A LoRA as the API shows it: its file name and strength; the server's folders stay on the server."""
    if isinstance(lora, dict) and isinstance(lora.get("path"), str):
        shown = {k: v for k, v in lora.items() if k != "path"}
        path = lora["path"]
        shown["name"] = path if path.startswith("https://") else PurePosixPath(path).name
        return shown
    return lora


def _current_review(asset: Asset) -> Review | None:
    from flenwheel.datasets.curate import current_review

    return current_review(asset)


@router.get(
    "/characters/{character_id}/assets", summary="List a character's assets", response_model=AssetPage
)
def list_assets(
    ref: OwnedCharacter,
    session: SessionDep,
    kind: Annotated[AssetKind | None, Query(description="source, base, anchor, generated, …")] = None,
    label: Annotated[ReviewLabel | None, Query(description="the current review label")] = None,
    unlabelled: Annotated[bool, Query(description="only assets nobody has labelled yet")] = False,
    stage: Annotated[
        str | None, Query(max_length=48, description="the pipeline stage in `attributes`")
    ] = None,
    job_id: Annotated[
        int | None,
        Query(ge=1, le=2**31 - 1, description="only the images this job made (they land as it runs)"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> AssetPage:
    """A character's assets, oldest first, filtered by kind, current label, pipeline stage or job; `total`
    counts every match, so `offset += limit` pages through until `offset >= total`."""
    conditions: list[ColumnElement[bool]] = [Asset.character_id == ref.id]
    if kind is not None:
        conditions.append(Asset.kind == kind.value)
    if label is not None:
        conditions.append(current_label() == label.value)
    if unlabelled:
        conditions.append(current_label().is_(None))
    if stage is not None:
        conditions.append(Asset.attributes["stage"].as_string() == stage)
    if job_id is not None:
        conditions.append(Asset.job_id == job_id)
    where = and_(*conditions)
    total = session.scalar(select(func.count()).select_from(Asset).where(where)) or 0
    rows = session.scalars(
        select(Asset)
        .where(where)
        .options(selectinload(Asset.reviews), selectinload(Asset.analysis))
        .order_by(Asset.id)
        .limit(limit)
        .offset(offset)
    ).all()
    return AssetPage(items=[asset_public(a) for a in rows], total=total, limit=limit, offset=offset)


@router.get("/assets/{asset_id}", summary="Get an asset's metadata", response_model=AssetPublic)
def get_asset(ref: OwnedAsset, session: SessionDep) -> AssetPublic:
    """One asset's metadata: provenance, current label, analysis."""
    asset = session.scalars(
        select(Asset)
        .where(Asset.id == ref.id)
        .options(selectinload(Asset.reviews), selectinload(Asset.analysis))
    ).one()
    made_from = session.execute(
        select(Asset.id, Asset.parents).where(Asset.character_id == asset.character_id, Asset.id != asset.id)
    ).all()
    children = [child for child, parents in made_from if asset.id in (parents or [])]
    return asset_public(asset, children)


@router.get(
    "/assets/{asset_id}/image",
    summary="Download an asset's image",
    response_class=Response,
    responses={200: {"content": {mime: {} for mime in sorted(set(MIME_TYPES.values()))}}},
)
def download_image(ref: OwnedAsset, project: ProjectDep, request: Request) -> Response:
    """The image bytes as stored (JPEG, PNG or WebP). Blobs never change, so the sha256 is a strong ETag."""
    etag = f'"{ref.sha256}"'
    headers = {"ETag": etag, "Cache-Control": "private, max-age=31536000, immutable"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    try:
        data = project.blobs.get(ref.sha256)
    except FileNotFoundError:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail=f"the image of asset {ref.id} is missing from the blob store ({ref.sha256[:12]}…): "
            "restore the project's blobs folder",
        ) from None
    return Response(data, media_type=MIME_TYPES.get(ref.format, "application/octet-stream"), headers=headers)


@router.get(
    "/assets/{asset_id}/thumb",
    summary="Download an asset's thumbnail",
    response_class=Response,
    responses={200: {"content": {"image/webp": {}}}},
)
async def download_thumbnail(ref: OwnedAsset, project: ProjectDep, request: Request) -> Response:
    """A WebP of the image at most 256 px on its longer side, made once per image and cached (web/thumbs.py):
    what galleries show instead of the full-size image."""
    from starlette.concurrency import run_in_threadpool

    from flenwheel.web.thumbs import THUMB_PX, thumbnail

    etag = f'"{ref.sha256}-{THUMB_PX}"'
    headers = {"ETag": etag, "Cache-Control": "private, max-age=31536000, immutable"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    try:
        data = await run_in_threadpool(thumbnail, project, ref.sha256)
    except FileNotFoundError:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail=f"the image of asset {ref.id} is missing from the blob store ({ref.sha256[:12]}…): "
            "restore the project's blobs folder",
        ) from None
    return Response(data, media_type="image/webp", headers=headers)


@router.post(
    "/characters/{character_id}/assets",
    summary="Upload images",
    response_model=UploadReport,
    responses={
        413: {"model": ErrorPublic, "description": "every file is over the upload limit"},
        422: {"model": ErrorPublic, "description": "no file could be taken in; `detail` gives each reason"},
    },
)
async def upload(
    ref: OwnedCharacter,
    project: ProjectDep,
    files: Annotated[list[UploadFile], File(description="one or more images (JPEG, PNG, WebP, HEIC, …)")],
    reference: Annotated[bool, Form(description="mark them as identity references")] = False,
) -> UploadReport:
    """Upload source photos. Each file is checked like `flenwheel ingest` (decodable image, size, pixels,
    duplicates); bad files are reported and skipped. 413 when every file is too large, 422 when no file
    could be taken in."""
    from starlette.concurrency import run_in_threadpool

    if len(files) > MAX_FILES_PER_UPLOAD:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            detail=f"{len(files)} files in one upload; send at most {MAX_FILES_PER_UPLOAD} per request",
        )
    limit = upload_limit_bytes(project)
    results: list[UploadResult] = []
    for file in files:
        name = _file_name(file.filename)
        data = await _read_limited(file, limit)
        if data is None:
            outcome = IngestOutcome(
                name,
                "rejected",
                reason="too_large",
                detail=f"the file is over the upload limit of {_mib(limit)} "
                "(FLENWHEEL_UPLOAD_MAX_MB on the server): send a smaller image",
            )
        else:
            outcome = await run_in_threadpool(_ingest_one, project, ref.id, data, name, reference)
        results.append(
            UploadResult(
                filename=name,
                status=outcome.status,
                asset_id=outcome.asset_id,
                reason=outcome.reason if outcome.status == "rejected" else None,
                detail=outcome.detail,
            )
        )
    report = UploadReport(
        results=results,
        added=sum(r.status == "added" for r in results),
        duplicates=sum(r.status == "duplicate" for r in results),
        rejected=sum(r.status == "rejected" for r in results),
    )
    if results and report.rejected == len(results):
        reasons = "; ".join(f"{r.filename}: {r.reason} — {r.detail}" for r in results)
        code = (
            status.HTTP_413_CONTENT_TOO_LARGE
            if all(r.reason == "too_large" for r in results)
            else status.HTTP_422_UNPROCESSABLE_CONTENT
        )
        raise HTTPException(code, detail=f"no file was taken in: {reasons}")
    return report


def upload_limit_bytes(project: Project) -> int:
    return int(project.settings.upload_max_mb * 2**20)


def _mib(size: int) -> str:
    return f"{size / 2**20:.3g} MiB"


async def _read_limited(file: UploadFile, limit: int) -> bytes | None:
    """The file's bytes, or None as soon as it is larger than `limit` (the rest is never held in memory)."""
    if file.size is not None and file.size > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    while chunk := await file.read(CHUNK):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _ingest_one(
    project: Project, character_id: int, data: bytes, name: str, reference: bool
) -> IngestOutcome:
    return ingest_bytes(project, character_id, data, name, name, reference)


def _file_name(given: str | None) -> str:
    """The client's file name without any folders (`../../x.jpg` is `x.jpg`); only ever shown, never a path."""
    name = PurePosixPath((given or "").replace("\\", "/")).name
    return printable_path(name or "upload")
