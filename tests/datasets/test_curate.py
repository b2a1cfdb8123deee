"""Curate on real photos with the real dlib model: who is kept, who is rejected, and why."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from flenwheel.characters import create_character
from flenwheel.datasets.curate import curate
from flenwheel.datasets.ingest import ingest
from flenwheel.datasets.review import review_asset, set_caption
from flenwheel.errors import IdentityUnknown, InvalidInput
from flenwheel.store.project import Project

from photos import FACES, LISA, POSES, london


def _compose(
    path: Path, parts: list[tuple[Path, tuple[int, int], tuple[int, int]]], size=(1000, 700)
) -> Path:
    """Paste photos (resized to `box`, placed at `at`) on a grey canvas: a staged group photo."""
    canvas = Image.new("RGB", size, (128, 128, 128))
    for source, box, at in parts:
        canvas.paste(Image.open(source).convert("RGB").resize(box), at)
    canvas.save(path, quality=95)
    return path


@pytest.fixture
def lisa_project(project: Project) -> Project:
    create_character(project, "lisa", "ohwx", "woman")
    return project


def _by_file(report):
    return {d.file: d for d in report.decisions}


def test_keeps_the_character_and_rejects_intruders_and_non_faces(lisa_project: Project) -> None:
    ingest(
        lisa_project, "lisa", [*LISA, london(3), london(7, "smiling"), FACES / "non_face" / "5_chelsea.jpg"]
    )
    report = curate(lisa_project, "lisa")
    decisions = _by_file(report)
    assert {f for f, d in decisions.items() if d.label == "good"} == {p.name for p in LISA}
    assert "another person" in decisions["neutral.jpg"].reason
    assert decisions["neutral.jpg"].identity_distance > report.threshold
    assert decisions["smiling.jpg"].label == "reject"
    assert decisions["5_chelsea.jpg"].reason.startswith("no face found")  # a cat is not a person
    assert report.identity_source.startswith("dominant cluster (8")
    for name in (p.name for p in LISA):
        d = decisions[name]
        assert d.angle == "front" and d.shot in {"close-up", "upper body"}
        assert d.caption.startswith("photo of ohwx woman")


def test_analysis_is_cached_and_user_labels_survive_recuration(lisa_project: Project) -> None:
    ingest(lisa_project, "lisa", LISA[:4])
    first = curate(lisa_project, "lisa")
    assert first.analysed_now == 4
    review_asset(lisa_project, "lisa", "2.jpg", "needs_correction", "hair covers one eye")
    set_caption(lisa_project, "lisa", "3.jpg", "photo of ohwx woman laughing at the camera")
    ingest(lisa_project, "lisa", LISA[4:6])
    second = _by_file(curate(lisa_project, "lisa"))
    assert curate(lisa_project, "lisa").analysed_now == 0
    assert second["2.jpg"].label == "needs_correction" and second["2.jpg"].decided_by == "user"
    assert second["3.jpg"].caption == "photo of ohwx woman laughing at the camera"
    assert second["5.jpg"].label == "good"


def test_group_photos_and_background_faces(lisa_project: Project, tmp_path: Path) -> None:
    pair = _compose(
        tmp_path / "pair.jpg", [(LISA[0], (420, 560), (20, 60)), (london(5), (480, 480), (500, 110))]
    )
    background = _compose(
        tmp_path / "background.jpg", [(london(6), (620, 620), (10, 40)), (LISA[1], (240, 320), (700, 300))]
    )
    ingest(lisa_project, "lisa", [*LISA[2:8], pair, background])
    decisions = _by_file(curate(lisa_project, "lisa"))
    assert decisions["pair.jpg"].label == "reject" and "2 people in frame" in decisions["pair.jpg"].reason
    assert decisions["pair.jpg"].faces == 2
    assert decisions["background.jpg"].label == "reject"
    assert "main face is another person" in decisions["background.jpg"].reason


def test_blurry_copies_and_near_duplicates_are_rejected(lisa_project: Project, tmp_path: Path) -> None:
    Image.open(LISA[0]).resize((480, 640)).save(tmp_path / "smaller_copy.png")
    Image.open(LISA[1]).filter(ImageFilter.GaussianBlur(8)).save(tmp_path / "blurred.jpg")
    ingest(lisa_project, "lisa", [*LISA, tmp_path / "smaller_copy.png", tmp_path / "blurred.jpg"])
    decisions = _by_file(curate(lisa_project, "lisa"))
    assert decisions["1.jpg"].label == "good"  # the larger original is the one kept
    copy = decisions["smaller_copy.png"]
    assert copy.label == "reject" and "near-duplicate of asset" in copy.reason and "1.jpg" in copy.reason
    assert decisions["blurred.jpg"].label == "reject" and "blurry" in decisions["blurred.jpg"].reason


def test_reference_images_define_the_identity(project: Project) -> None:
    create_character(project, "sam", "ohwx_sam", "person")
    ingest(project, "sam", [london(11)], reference=True)
    ingest(project, "sam", [london(11, "smiling"), *LISA[:3]])
    report = curate(project, "sam")
    assert report.identity_source.startswith("user references (1")
    decisions = _by_file(report)
    assert decisions["smiling.jpg"].label == "good"
    assert all(
        decisions[p.name].label == "reject" for p in LISA[:3]
    )  # lisa is the majority, not the character


def test_identity_unknown_when_nobody_appears_twice(project: Project) -> None:
    create_character(project, "x", "ohwx_x", "person")
    ingest(project, "x", [london(1), london(2), london(3)])
    with pytest.raises(IdentityUnknown, match="--reference"):
        curate(project, "x")


def test_review_requires_a_known_label_and_a_reason(lisa_project: Project) -> None:
    ingest(lisa_project, "lisa", LISA[:1])
    with pytest.raises(InvalidInput, match="use one of good, needs_correction, reject"):
        review_asset(lisa_project, "lisa", "1.jpg", "great")
    with pytest.raises(InvalidInput, match="--reason"):
        review_asset(lisa_project, "lisa", "1.jpg", "reject")
    with pytest.raises(InvalidInput, match="trigger token"):
        set_caption(lisa_project, "lisa", "1.jpg", "a photo of a woman")


def _cutout(source: Path, brightness: float = 1.0) -> Image.Image:
    """The photo with its background removed, as a user prepares one: an ellipse around the head and
    shoulders stays opaque, the rest (35–45 % of the pixels) is transparent."""
    photo = ImageEnhance.Brightness(Image.open(source).convert("RGB")).enhance(brightness)
    width, height = photo.size
    mask = Image.new("L", photo.size, 0)
    ImageDraw.Draw(mask).ellipse((0.12 * width, 0.04 * height, 0.88 * width, 1.3 * height), fill=255)
    photo.putalpha(mask)
    assert 0.35 <= float((np.asarray(mask) == 0).mean()) <= 0.45
    return photo


def test_cutouts_and_white_backgrounds_are_judged_on_the_subject(
    lisa_project: Project, tmp_path: Path
) -> None:
    """Issue 10 case 11: flenwheel's own white fill and a white studio backdrop are not "overexposed"."""
    for source in LISA[:2]:
        _cutout(source).save(tmp_path / f"cutout_{source.stem}.png")
    studio = _cutout(LISA[2])
    on_white = Image.new("RGB", studio.size, "white")
    on_white.paste(studio, mask=studio.getchannel("A"))
    on_white.save(tmp_path / "studio_white.jpg", quality=92)
    _cutout(LISA[4], brightness=2.2).save(tmp_path / "blown_out_cutout.png")  # the face itself is clipped
    washed = Image.blend(Image.open(LISA[3]).convert("RGB"), Image.new("RGB", (600, 800), "white"), 0.95)
    washed.save(tmp_path / "washed_out.jpg", quality=92)
    names = ["cutout_1.png", "cutout_2.png", "studio_white.jpg", "blown_out_cutout.png", "washed_out.jpg"]
    ingest(lisa_project, "lisa", [*LISA[5:], *(tmp_path / name for name in names)])
    decisions = _by_file(curate(lisa_project, "lisa"))
    for name in ("cutout_1.png", "cutout_2.png"):
        assert decisions[name].label == "good", decisions[name].reason
        assert "transparent background" in decisions[name].reason
    assert decisions["studio_white.jpg"].label == "good", decisions["studio_white.jpg"].reason
    assert "transparent" not in decisions["studio_white.jpg"].reason
    blown = decisions["blown_out_cutout.png"]
    assert blown.label == "reject" and "overexposed" in blown.reason and "of the subject" in blown.reason
    assert "transparent background" in blown.reason
    assert (
        decisions["washed_out.jpg"].label == "reject" and "overexposed" in decisions["washed_out.jpg"].reason
    )


def _grey_copy(source: Path, size: tuple[int, int], target: Path) -> Path:
    """A larger, sharpened greyscale copy: what the old sharpness × size rule kept over its colour original."""
    grey = ImageOps.grayscale(Image.open(source)).resize(size, Image.Resampling.LANCZOS)
    grey.filter(ImageFilter.UnsharpMask(radius=2, percent=150)).save(target, quality=95)
    return target


def test_the_reference_wins_the_near_duplicate_tie(project: Project, tmp_path: Path) -> None:
    """Issue 10 case 14: the user's --reference photo is kept over a greyscale copy made from it."""
    create_character(project, "sam", "ohwx_sam", "person")
    ingest(project, "sam", [london(11)], reference=True)
    copy = _grey_copy(london(11), (640, 640), tmp_path / "grey_reference_copy.jpg")
    ingest(project, "sam", [london(11, "smiling"), copy])
    decisions = _by_file(curate(project, "sam"))
    assert decisions["neutral.jpg"].label == "good", decisions["neutral.jpg"].reason
    rejected = decisions["grey_reference_copy.jpg"]
    assert rejected.label == "reject" and "near-duplicate" in rejected.reason
    assert "the reference photo" in rejected.reason


def test_colour_wins_the_near_duplicate_tie_over_greyscale(lisa_project: Project, tmp_path: Path) -> None:
    """Issue 10 case 14: with no reference among them, the colour photo beats its greyscale copy."""
    ingest(lisa_project, "lisa", [*LISA[:5], _grey_copy(LISA[0], (900, 1200), tmp_path / "grey_lisa.jpg")])
    decisions = _by_file(curate(lisa_project, "lisa"))
    assert decisions["1.jpg"].label == "good", decisions["1.jpg"].reason
    grey = decisions["grey_lisa.jpg"]
    assert grey.label == "reject" and "the colour copy" in grey.reason


def test_analyses_cached_before_the_background_rule_are_remeasured(
    lisa_project: Project, tmp_path: Path
) -> None:
    """A project curated by an older flenwheel keeps its face analysis but gets the new exposure judgement."""
    from sqlalchemy import select

    from flenwheel.store.models import Analysis

    _cutout(LISA[0]).save(tmp_path / "cutout.png")
    ingest(lisa_project, "lisa", [*LISA[1:4], tmp_path / "cutout.png"])
    curate(lisa_project, "lisa")
    with lisa_project.db.session() as session:  # what an older version stored: no background, no chroma
        for row in session.scalars(select(Analysis)):
            quality = {k: v for k, v in row.data["quality"].items() if k not in ("background", "chroma")}
            row.data = {**row.data, "quality": {**quality, "brightness": 0.99, "clipped_bright": 0.4}}
    report = curate(lisa_project, "lisa")
    assert report.analysed_now == 0
    decisions = _by_file(report)
    assert decisions["cutout.png"].label == "good", decisions["cutout.png"].reason
    with lisa_project.db.session() as session:
        assert all(row.data["quality"]["background"] is not None for row in session.scalars(select(Analysis)))


def test_every_image_gets_pose_tags_cached_and_shown_in_the_report(
    lisa_project: Project, tmp_path: Path
) -> None:
    """Pose tags come with the face analysis, are cached with it, are added to analyses cached before pose
    was measured (without looking for faces again), count in the dataset's composition and show in the
    curation report."""
    from sqlalchemy import select

    from flenwheel.datasets.versions import build_dataset_version
    from flenwheel.report.curation import write_curation_report
    from flenwheel.store.models import Analysis

    ingest(lisa_project, "lisa", [*LISA[:3], POSES / "t_pose.jpg", FACES / "non_face" / "1_coffee.jpg"])
    decisions = _by_file(curate(lisa_project, "lisa"))
    t_pose = decisions["t_pose.jpg"].pose
    assert t_pose == ["full body", "standing", "T-pose", "facing front"]
    assert decisions["1_coffee.jpg"].pose is None
    assert "full body" not in (decisions["1.jpg"].pose or [])
    with lisa_project.db.session() as session:  # what an older flenwheel stored: faces, no pose
        for row in session.scalars(select(Analysis)):
            row.data = {k: v for k, v in row.data.items() if k not in ("pose_analyzer", "body")}
    report = curate(lisa_project, "lisa")
    assert report.analysed_now == 0 and _by_file(report)["t_pose.jpg"].pose == t_pose
    with lisa_project.db.session() as session:
        assert all(row.data["pose_analyzer"] for row in session.scalars(select(Analysis)))
    for photo in ("t_pose.jpg", "1_coffee.jpg"):  # no face of lisa: labelled by hand for the composition
        review_asset(lisa_project, "lisa", photo, "good")
    version = build_dataset_version(lisa_project, "lisa").version
    poses = version.composition["poses"]
    assert poses["measured"] == 5 and poses["no person"] == 1 and poses["T-pose"] == 1
    page = write_curation_report(lisa_project, report, version, [], tmp_path / "report.html").read_text()
    assert "full body, standing, T-pose, facing front" in page and "no person found" in page
