"""Issue 13 §1: the identity gate on real photos with the real dlib model — references always count, references
that disagree are flagged, the needs-review band comes first, near-duplicates are judged on content."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageEnhance, ImageOps

from flenwheel.characters import create_character
from flenwheel.datasets.curate import curate
from flenwheel.datasets.ingest import ingest
from flenwheel.datasets.review import review_asset, set_reference
from flenwheel.datasets.versions import build_dataset_version
from flenwheel.errors import InvalidInput, ReferenceUnusable
from flenwheel.report.curation import write_curation_report
from flenwheel.store.project import Project

from photos import FACES, LISA, london


def _by_file(report):
    return {d.file: d for d in report.decisions}


def _save(image: Image.Image, path: Path) -> Path:
    image.save(path, quality=95)
    return path


def _named(tmp_path: Path, n: int, expression: str = "neutral") -> Path:
    """A London photo under a name of its own (every person's files are neutral.jpg and smiling.jpg)."""
    target = tmp_path / f"london_{n:03d}_{expression}.jpg"
    target.write_bytes(london(n, expression).read_bytes())
    return target


def test_a_reference_without_a_usable_face_is_an_error_naming_it(project: Project, tmp_path: Path) -> None:
    """Main dropped such references without a word and went on with the others (or with clustering)."""
    create_character(project, "lisa", "ohwx", "woman")
    tiny = _save(Image.open(london(11)).convert("RGB").resize((90, 90)), tmp_path / "tiny_face.jpg")
    ingest(project, "lisa", [LISA[0], FACES / "non_face" / "4_brick.jpg", tiny], reference=True)
    ingest(project, "lisa", LISA[1:3])
    with pytest.raises(ReferenceUnusable) as raised:
        curate(project, "lisa")
    message = str(raised.value)
    assert "4_brick.jpg: no face found" in message
    assert "tiny_face.jpg: the face is only 36x36 px, too small" in message
    assert "1.jpg" not in message  # the good reference is not blamed
    assert "flenwheel reference NAME ASSET --off" in message
    # Unmarking the two lets curate go on; the brick is then an ordinary photo without a face.
    set_reference(project, "lisa", "4_brick.jpg", False)
    set_reference(project, "lisa", "tiny_face.jpg", False)
    decisions = _by_file(curate(project, "lisa"))
    assert decisions["4_brick.jpg"].label == "reject" and "no face found" in decisions["4_brick.jpg"].reason
    assert decisions["2.jpg"].label == "good" and decisions["1.jpg"].is_reference


def test_a_reference_unfit_for_training_still_defines_the_identity(project: Project, tmp_path: Path) -> None:
    """A low-resolution reference: main dropped it, clustered, and kept Lisa (the majority) as 'sam'."""
    create_character(project, "sam", "ohwx_sam", "person")
    small = _save(Image.open(london(11)).convert("RGB").resize((200, 200)), tmp_path / "small_reference.jpg")
    ingest(project, "sam", [small], reference=True)
    ingest(project, "sam", [london(11, "smiling"), *LISA[:3]])
    report = curate(project, "sam")
    assert report.identity_source.startswith("user references (1")
    decisions = _by_file(report)
    reference = decisions["small_reference.jpg"]
    assert reference.label == "reject" and reference.is_reference
    assert "defines the character; not for training: low resolution" in reference.reason
    assert decisions["smiling.jpg"].label == "good"
    assert all(decisions[p.name].label == "reject" for p in LISA[:3])


def test_an_overexposed_reference_still_defines_the_identity(project: Project, tmp_path: Path) -> None:
    """Main dropped it, found nobody twice and asked for the --reference the user had given."""
    create_character(project, "kim", "ohwx_kim", "person")
    bright = ImageEnhance.Brightness(Image.open(london(12)).convert("RGB")).enhance(2.2)
    ingest(project, "kim", [_save(bright, tmp_path / "bright_reference.jpg")], reference=True)
    ingest(project, "kim", [london(12, "smiling"), _named(tmp_path, 13), _named(tmp_path, 14)])
    decisions = _by_file(curate(project, "kim"))
    assert decisions["bright_reference.jpg"].label == "reject"
    assert "not for training: overexposed" in decisions["bright_reference.jpg"].reason
    assert decisions["smiling.jpg"].label == "good", decisions["smiling.jpg"].reason
    for intruder in ("london_013_neutral.jpg", "london_014_neutral.jpg"):
        assert decisions[intruder].label == "reject" and "another person" in decisions[intruder].reason


def test_references_that_disagree_are_flagged_never_rejected(project: Project, tmp_path: Path) -> None:
    """One odd reference among Lisa's: main scored each reference by its median distance to the others and
    rejected good references as 'another person'."""
    create_character(project, "lisa", "ohwx", "woman")
    odd = _save(Image.open(london(12)).convert("RGB"), tmp_path / "odd_reference.jpg")
    ingest(project, "lisa", [LISA[0], LISA[1], odd], reference=True)
    ingest(project, "lisa", [*LISA[2:5], london(12, "smiling")])
    report = curate(project, "lisa")
    decisions = _by_file(report)
    assert decisions["1.jpg"].label == "good" and decisions["2.jpg"].label == "good"
    flagged = decisions["odd_reference.jpg"]
    assert flagged.label == "needs_review" and "disagrees with the other references" in flagged.reason
    assert len(report.warnings) == 1 and "odd_reference.jpg" in report.warnings[0]
    assert all(decisions[p.name].label == "good" for p in LISA[2:5])
    # A photo that looks only like the odd reference is shown for review, never put in the dataset unseen.
    lookalike = decisions["smiling.jpg"]
    assert lookalike.label == "needs_review" and "disagrees with the others" in lookalike.reason
    assert [d.label for d in report.decisions[:2]] == ["needs_review", "needs_review"]
    # The HTML report shows the warning and lists the two to review first, with their reasons.
    version = build_dataset_version(project, "lisa").version
    page = write_curation_report(project, report, version, [], tmp_path / "report.html").read_text()
    assert "references disagree: odd_reference.jpg" in page
    rows = page.split("<tr>")
    labelled = [row for row in rows if 'class="needs_review"' in row or 'class="good"' in row]
    assert ['class="needs_review"' in row for row in labelled[:3]] == [True, True, False]
    assert "disagrees with the other references" in labelled[0] + labelled[1]


def test_the_review_band_comes_first_and_others_present_are_weighed(project: Project, tmp_path: Path) -> None:
    """london_013's smile is 0.43 from their neutral photo: between strict and loose, so it needs review
    (main's 0.48 took it). london_045's neutral photo is 0.58 from the reference (the band) but 0.26 from
    london_045's smiling photo, which is clearly someone else (0.64): another person, nearer someone else."""
    create_character(project, "ann", "ohwx_ann", "person")
    ingest(project, "ann", [london(13), london(34)], reference=True)  # two people: both references count
    report = curate(project, "ann")
    assert report.warnings and "look like a different person from each other" in report.warnings[0]

    create_character(project, "bo", "ohwx_bo", "person")
    ingest(project, "bo", [london(13)], reference=True)
    ingest(project, "bo", [london(13, "smiling"), london(34, "smiling")])
    report = curate(project, "bo")
    assert report.threshold == 0.42 and report.review_threshold == 0.60
    first = report.decisions[0]
    assert first.file.endswith("smiling.jpg") and first.label == "needs_review"
    assert "needs review: maybe the character" in first.reason and 0.42 < first.identity_distance <= 0.60
    assert [d.label for d in report.decisions[1:]] in (["good", "reject"], ["reject", "good"])

    create_character(project, "cy", "ohwx_cy", "person")
    ingest(project, "cy", [london(34)], reference=True)
    ingest(project, "cy", [_named(tmp_path, 34, "smiling"), _named(tmp_path, 45)])
    alone = _by_file(curate(project, "cy"))
    assert alone["london_045_neutral.jpg"].label == "needs_review"  # alone: nobody to weigh it against
    assert alone["london_034_smiling.jpg"].label == "good"
    ingest(project, "cy", [_named(tmp_path, 45, "smiling")])
    decisions = _by_file(curate(project, "cy"))
    intruder = decisions["london_045_neutral.jpg"]
    assert intruder.label == "reject" and "another person in this batch is nearer" in intruder.reason
    assert decisions["london_045_smiling.jpg"].label == "reject"
    assert decisions["london_034_smiling.jpg"].label == "good"

    with pytest.raises(InvalidInput, match="good, needs_correction, reject"):
        review_asset(project, "cy", str(intruder.asset_id), "needs_review", "the gate's label only")


def test_variety_is_kept_and_a_mirrored_copy_is_a_duplicate(project: Project, tmp_path: Path) -> None:
    """london_003's neutral and smiling photos are 4 bits apart as whole frames: main called the smile a
    near-duplicate. A mirrored copy is 30 bits away: main kept it as a second photo."""
    create_character(project, "dee", "ohwx_dee", "person")
    mirrored = _save(ImageOps.mirror(Image.open(london(3)).convert("RGB")), tmp_path / "mirrored.jpg")
    ingest(project, "dee", [london(3)], reference=True)
    ingest(project, "dee", [london(3, "smiling"), mirrored])
    decisions = _by_file(curate(project, "dee"))
    assert decisions["smiling.jpg"].label == "good", decisions["smiling.jpg"].reason
    assert decisions["mirrored.jpg"].label == "reject"
    assert decisions["mirrored.jpg"].reason.startswith("mirror image of asset")
    assert "neutral.jpg" in decisions["mirrored.jpg"].reason
