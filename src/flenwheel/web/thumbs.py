"""Thumbnails for the web app's grids: a 256 px WebP per stored image, made once and cached in the project
folder (`thumbs/<sha[:2]>/<sha>-256.webp`). Blobs never change, so a thumbnail named by the blob's sha256 never
goes stale; grids send these, never the full-size image."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

from PIL import Image

from flenwheel.images import open_stored
from flenwheel.store.project import Project

THUMB_PX = 256  # the longer side; tiles show it at up to 256 CSS px
THUMB_QUALITY = 80  # WebP quality: Pillow's default is 80
THUMBS_DIR = "thumbs"


def thumbnail_path(project: Project, sha256: str, size: int = THUMB_PX) -> Path:
    return project.root / THUMBS_DIR / sha256[:2] / f"{sha256}-{size}.webp"


def make_thumbnail(data: bytes, size: int = THUMB_PX) -> bytes:
    """A WebP (RGB) of a stored image — already upright and sRGB (images.decode_image normalised it at
    ingest) — with its longer side at most `size` px, never enlarged."""
    image = open_stored(data)
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "WEBP", quality=THUMB_QUALITY, method=4)
    return out.getvalue()


def thumbnail(project: Project, sha256: str, size: int = THUMB_PX) -> bytes:
    """The cached thumbnail of blob `sha256`, made (and written atomically) on first use.

    Raises FileNotFoundError when the blob is missing from the store."""
    path = thumbnail_path(project, sha256, size)
    if path.exists():
        return path.read_bytes()
    data = make_thumbnail(project.blobs.get(sha256), size)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".part")
    with os.fdopen(handle, "wb") as out:
        out.write(data)
    os.replace(temporary, path)
    return data
