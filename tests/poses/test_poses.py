"""MediaPipe Pose on real photos of people in known poses (tests/fixtures/poses, CC0): the pose tags."""

from __future__ import annotations

import pytest
from PIL import Image, ImageOps

from flenwheel.domain import Arms, BodyPose, Facing, Posture
from flenwheel.poses.geometry import LEFT_SHOULDER, classify_pose
from flenwheel.poses.mediapipe_backend import MediaPipePoseAnalyzer

from patience import HANG_S
from photos import FACES, POSES


@pytest.fixture(scope="module")
def analyzer() -> MediaPipePoseAnalyzer:
    return MediaPipePoseAnalyzer()


def _pose(analyzer: MediaPipePoseAnalyzer, image: Image.Image) -> BodyPose:
    body = analyzer.analyze(image)
    assert body is not None, "the person in the photo was not found"
    return body


@pytest.mark.parametrize(
    ("photo", "posture", "arms"),
    [
        ("t_pose.jpg", Posture.STANDING, Arms.T_POSE),
        ("standing.jpg", Posture.STANDING, Arms.DOWN),
        ("arms_up.jpg", Posture.STANDING, Arms.UP),
        ("squat.jpg", Posture.SITTING, None),  # hands together at the chest: neither down, up nor out
    ],
)
def test_tags_of_people_in_known_poses(
    analyzer: MediaPipePoseAnalyzer, photo: str, posture: Posture, arms: Arms | None
) -> None:
    image = Image.open(POSES / photo)
    body = _pose(analyzer, image)
    assert (body.full_body, body.posture, body.arms, body.facing) == (True, posture, arms, Facing.FRONT)
    assert len(body.landmarks) == 33
    assert all(0 <= x <= image.width and 0 <= y <= image.height for x, y, v in body.landmarks if v > 0.5)
    # a mirror image is the same pose
    mirrored = _pose(analyzer, ImageOps.mirror(image))
    assert (mirrored.posture, mirrored.arms, mirrored.facing) == (posture, arms, Facing.FRONT)


def test_a_portrait_is_not_a_full_body_and_a_cup_is_nobody(analyzer: MediaPipePoseAnalyzer) -> None:
    portrait = _pose(analyzer, Image.open(FACES / "single" / "astronaut.jpg"))
    assert not portrait.full_body and portrait.posture is None and "partial body" in portrait.tags
    assert analyzer.analyze(Image.open(FACES / "non_face" / "1_coffee.jpg")) is None


def test_a_cropped_body_is_partial(analyzer: MediaPipePoseAnalyzer) -> None:
    image = Image.open(POSES / "standing.jpg")
    top_half = image.crop((0, 0, image.width, image.height // 2))
    body = analyzer.analyze(top_half)
    assert body is None or not body.full_body


def test_shoulders_in_mirror_order_face_away(analyzer: MediaPipePoseAnalyzer) -> None:
    """Seen from behind, the person's left shoulder is on the image's left: the T-pose photo's landmarks with
    left and right swapped (BlazePose pairs) are that view, with the face hidden."""
    image = Image.open(POSES / "t_pose.jpg")
    body = _pose(analyzer, image)
    pairs = [(1, 4), (2, 5), (3, 6), (7, 8), (9, 10)] + [(i, i + 1) for i in range(11, 33, 2)]
    swapped = list(body.landmarks)
    for left, right in pairs:
        swapped[left], swapped[right] = body.landmarks[right], body.landmarks[left]
    for face_point in range(11):
        x, y, _ = swapped[face_point]
        swapped[face_point] = (x, y, 0.1)
    back = classify_pose(swapped, image.width, image.height)
    assert back.facing is Facing.BACK and back.arms is Arms.T_POSE and back.posture is Posture.STANDING
    assert swapped[LEFT_SHOULDER][0] < swapped[LEFT_SHOULDER + 1][0]
    with pytest.raises(ValueError, match="33 landmarks"):
        classify_pose(swapped[:17], image.width, image.height)


def test_mediapipe_says_nothing_on_stderr() -> None:
    """MediaPipe's C++ side (TFLite, absl) logs each graph start to stderr, which buried the CLI's one-line
    errors; the analyser keeps it quiet, and still finds the person."""
    import subprocess
    import sys

    script = (
        "from PIL import Image\n"
        "from flenwheel.poses.mediapipe_backend import MediaPipePoseAnalyzer\n"
        f"image = Image.open({str(POSES / 'standing.jpg')!r})\n"
        "print(MediaPipePoseAnalyzer().analyze(image) is not None)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=HANG_S)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True" and done.stderr == ""
