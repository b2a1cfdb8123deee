"""Ingest: folders recursively, idempotent, one bad file never stops the batch, nothing stored is lost."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import func, select

from flenwheel.characters import create_character
from flenwheel.datasets.ingest import ingest
from flenwheel.images import open_stored
from flenwheel.store.models import Asset, IngestRejection
from flenwheel.store.project import Project

from photos import FACES, LISA


@pytest.fixture
def lisa_project(project: Project) -> Project:
    create_character(project, "lisa", "ohwx", "woman")
    return project


def _count(project: Project, model) -> int:
    with project.db.session() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_folder_with_bad_files_keeps_going_and_explains_each(lisa_project: Project, tmp_path: Path) -> None:
    folder = tmp_path / "shoot"
    (folder / "day2" / ".thumbnails").mkdir(parents=True)
    for photo in LISA[:3]:
        shutil.copy(photo, folder / photo.name)
    shutil.copy(LISA[3], folder / "day2" / "4.jpg")
    shutil.copy(LISA[4], folder / "day2" / ".thumbnails" / "hidden.jpg")
    (folder / "notes.txt").write_text("not a photo")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "day2" / "cut.jpg").write_bytes(LISA[5].read_bytes()[:20000])
    outcomes = ingest(lisa_project, "lisa", [folder, tmp_path / "missing.jpg"])
    by_name = {Path(o.path).name: o for o in outcomes}
    assert [o.status for o in outcomes].count("added") == 4
    assert "hidden.jpg" not in by_name
    assert by_name["notes.txt"].reason == "not_an_image"
    assert by_name["empty.jpg"].reason == "empty"
    assert by_name["cut.jpg"].reason == "corrupt" and "truncated" in by_name["cut.jpg"].detail
    assert by_name["missing.jpg"].reason == "missing"
    assert _count(lisa_project, IngestRejection) == 4
    with lisa_project.db.session() as session:
        names = set(session.scalars(select(Asset.source_name)))
    assert "shoot/day2/4.jpg" in names


def test_reingesting_the_same_bytes_adds_nothing(lisa_project: Project, tmp_path: Path) -> None:
    ingest(lisa_project, "lisa", LISA[:2])
    copy = tmp_path / "renamed.jpg"
    shutil.copy(LISA[0], copy)
    outcomes = ingest(lisa_project, "lisa", [*LISA[:2], copy])
    assert [o.status for o in outcomes] == ["duplicate"] * 3
    assert _count(lisa_project, Asset) == 2


def test_plain_jpeg_is_stored_byte_for_byte(lisa_project: Project) -> None:
    [outcome] = ingest(lisa_project, "lisa", LISA[:1])
    with lisa_project.db.session() as session:
        asset = session.get_one(Asset, outcome.asset_id)
    assert lisa_project.blobs.get(asset.sha256) == LISA[0].read_bytes()
    assert asset.format == "jpg" and asset.normalised == []


def test_rotated_cmyk_photo_is_stored_upright_rgb(lisa_project: Project, tmp_path: Path) -> None:
    upright = Image.open(LISA[0]).convert("RGB")
    sideways = upright.transpose(Image.Transpose.ROTATE_270)  # what the sensor wrote
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "phone.jpg"
    sideways.convert("CMYK").save(path, exif=exif.tobytes(), quality=95)
    [outcome] = ingest(lisa_project, "lisa", [path])
    assert outcome.status == "added" and "EXIF" in outcome.detail and "CMYK" in outcome.detail
    with lisa_project.db.session() as session:
        asset = session.get_one(Asset, outcome.asset_id)
    stored = open_stored(lisa_project.blobs.get(asset.sha256))
    assert stored.mode == "RGB" and stored.size == upright.size == (asset.width, asset.height)
    assert asset.format == "png"


def test_decompression_bomb_is_refused_without_decoding(lisa_project: Project, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buffer, format="PNG")  # 144 megapixels in a tiny file
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(buffer.getvalue())
    [outcome] = ingest(lisa_project, "lisa", [bomb, FACES / "non_face" / "1_coffee.jpg"])[:1]
    assert outcome.reason == "too_many_pixels" and "megapixels" in outcome.detail
    assert _count(lisa_project, Asset) == 1  # the good file after it still went in
