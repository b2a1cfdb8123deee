"""The dlib analyser on real photos: calibrated identity threshold, head yaw, shot type, expression."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from flenwheel.config import Settings
from flenwheel.domain import Angle, Expression, Shot
from flenwheel.faces.calibration import gate_distances, pair_distances
from flenwheel.faces.dlib_backend import DlibFaceAnalyzer
from flenwheel.faces.geometry import (
    angle_bucket,
    expression_confidence,
    expression_of,
    shot_type,
    sure_expression,
)

from photos import FACES, LISA, london


@pytest.fixture(scope="module")
def analyzer() -> DlibFaceAnalyzer:
    return DlibFaceAnalyzer(detect_max_side=Settings().detect_max_side)


@pytest.fixture(scope="module")
def people(analyzer: DlibFaceAnalyzer) -> dict[str, list]:
    """Main-face analysis of every identity photo in the fixtures, by person."""
    found: dict[str, list] = {}
    for photo in sorted((FACES / "identities").glob("*/*.jpg")):
        faces = analyzer.analyze(Image.open(photo).convert("RGB"))
        assert len(faces) == 1, f"{photo} should show exactly one face"
        found.setdefault(photo.parent.name, []).append((photo.stem, faces[0]))
    return found


def test_configured_thresholds_on_the_fixtures(people: dict[str, list]) -> None:
    """Strict: no stranger accepted; loose: none of the person's own photos rejected outright (the band
    between them goes to review)."""
    embeddings = {name: [np.asarray(face.embedding) for _, face in photos] for name, photos in people.items()}
    strict, loose = Settings().identity_threshold, Settings().identity_review_threshold
    for distances in (pair_distances(embeddings), gate_distances(embeddings)):
        assert distances.rates(strict).false_accepts == 0
        assert distances.rates(loose).false_rejects == 0
        assert len(distances.impostor) > 3000 and len(distances.genuine) >= 68
    gate = gate_distances(embeddings).rates(strict)
    assert gate.false_rejects <= 2 and gate.genuine_trials == 88  # london_013's pair (0.43): to review
    # face_recognition's 0.6 default lets strangers through on this very set: why 0.60 only asks for review.
    assert pair_distances(embeddings).rates(0.6).false_accepts > 0


def test_expression_tag_on_labelled_photos(people: dict[str, list]) -> None:
    """Labels: the London set's file names, and Lisa's eight photos, all neutral (checked by eye). Main's
    width-only rule got 65 of 80 London photos right and called one neutral photo in six smiling."""
    labelled = [
        (Expression(stem), face)
        for photos in people.values()
        for stem, face in photos
        if stem in ("neutral", "smiling")
    ] + [(Expression.NEUTRAL, face) for _, face in people["lisa"]]
    assert len(labelled) == 88
    right = sum(expression_of(face) == truth for truth, face in labelled)
    neutral = [face for truth, face in labelled if truth == Expression.NEUTRAL]
    assert right >= 79 and sum(expression_of(face) == Expression.SMILING for face in neutral) <= 4
    # What captions get: confident calls only; the unsure rest leave the expression out.
    sure = [(truth, sure_expression(face)) for truth, face in labelled if sure_expression(face) is not None]
    assert len(sure) >= 75 and sum(call != truth for truth, call in sure) <= 4
    assert all(0.0 <= expression_confidence(face) <= 1.0 for _, face in labelled)


def test_turned_faces_get_mirrored_yaw(analyzer: DlibFaceAnalyzer) -> None:
    """A photo and its mirror image measure opposite yaws; the bucket names follow the sign."""
    measured = []
    for photo in LISA:
        image = Image.open(photo).convert("RGB")
        [face] = analyzer.analyze(image)
        [mirrored] = analyzer.analyze(ImageOps.mirror(image))
        measured.append((face.yaw, mirrored.yaw))
    for yaw, mirrored_yaw in measured:
        assert mirrored_yaw == pytest.approx(-yaw, abs=3.0)
    assert angle_bucket(-30) == Angle.THREE_QUARTER_LEFT and angle_bucket(30) == Angle.THREE_QUARTER_RIGHT
    assert angle_bucket(-70) == Angle.PROFILE_LEFT and angle_bucket(5) == Angle.FRONT


def test_shot_type_follows_how_much_of_the_frame_the_face_fills(analyzer: DlibFaceAnalyzer) -> None:
    portrait = Image.open(LISA[0]).convert("RGB")
    [face] = analyzer.analyze(portrait)
    assert shot_type(face, portrait.height) == Shot.CLOSE_UP
    canvas = Image.new("RGB", (1000, 2000), (200, 200, 200))  # the same head in a taller frame
    canvas.paste(portrait, (200, 0))
    [in_canvas] = analyzer.analyze(canvas)
    assert shot_type(in_canvas, canvas.height) == Shot.UPPER_BODY
    assert shot_type(face, portrait.height * 7) == Shot.FULL_BODY  # a head an eighth of the frame


def test_no_face_on_objects_and_a_cat(analyzer: DlibFaceAnalyzer) -> None:
    for photo in sorted((FACES / "non_face").glob("*.jpg")):
        assert analyzer.analyze(Image.open(photo).convert("RGB")) == [], photo.name


def test_embeddings_are_face_recognitions_and_pool_workers_analyse_as_one_process(
    analyzer: DlibFaceAnalyzer,
) -> None:
    """What the faster embedding must keep (issue 13): on the same box, our descriptor — dlib's ResNet run
    with numpy (faces/dlib_resnet.py) — equals the face_recognition library's (dlib's own code) to 1e-6 on every
    coordinate (measured: ≤ 3e-7, plus the rounding to the 6 places stored), and curate's pool of forked
    workers — which inherit the parent's loaded models — gives exactly the analyses of one in-process analyser."""
    import face_recognition

    from flenwheel.datasets.analysis import analyze_files, analyze_image
    from flenwheel.domain import AssetAnalysis
    from flenwheel.images import open_stored

    photos = [*LISA[:3], london(1), london(2, "smiling"), sorted((FACES / "non_face").glob("*.jpg"))[0]]
    alone = {i: analyze_image(open_stored(p.read_bytes()), analyzer) for i, p in enumerate(photos)}
    for i, photo in enumerate(photos):
        rgb = np.asarray(open_stored(photo.read_bytes()).convert("RGB"))
        for face in alone[i].faces:
            left, top, right, bottom = face.box
            [theirs] = face_recognition.face_encodings(rgb, [(top, right, bottom, left)], num_jitters=1)
            assert np.abs(np.asarray(face.embedding) - theirs).max() <= 1e-6, photo
    assert sum(len(a.faces) for a in alone.values()) == 5
    pooled: dict[int, AssetAnalysis] = {}
    analyze_files(
        list(enumerate(photos)),
        analyzer.detect_max_side,
        2,
        lambda i, analysis: pooled.setdefault(i, analysis),
    )
    body = {"pose_analyzer", "body"}  # measured in the parent process either way (not a face analysis)
    assert {i: a.model_dump(exclude=body) for i, a in pooled.items()} == {
        i: a.model_dump(exclude=body) for i, a in alone.items()
    }


def test_a_file_that_is_not_the_descriptor_network_is_refused(tmp_path: Path) -> None:
    import face_recognition_models as models

    from flenwheel.faces.dlib_resnet import DlibResNet, WeightsFormatError

    with pytest.raises(WeightsFormatError, match="not dlib's metric-learning network"):
        DlibResNet(Path(models.pose_predictor_five_point_model_location()))
    cut = tmp_path / "cut.dat"  # the right header, most of the layers missing
    cut.write_bytes(Path(models.face_recognition_model_location()).read_bytes()[:2_000_000])
    with pytest.raises(WeightsFormatError, match=r"ends inside a tensor|expected 29 of each"):
        DlibResNet(cut)
