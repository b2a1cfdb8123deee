"""Pose tags from 33 body landmarks (BlazePose topology, as MediaPipe Pose returns them), by joint angles.

Landmark indices are BlazePose's: 0 nose, 2/5 left/right eye, 11/12 shoulders, 13/14 elbows, 15/16 wrists,
23/24 hips, 25/26 knees, 27/28 ankles (left = the person's left). Image y grows downward. The thresholds
were set on the CODAIT team's CC0 photos in tests/fixtures/poses (ATTRIBUTION.md there) and are checked
by tests/poses/test_poses.py; each is a round angle or ratio, not a fitted number.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from flenwheel.domain import Arms, BodyPose, Facing, Posture

Landmark = tuple[float, float, float]  # x px, y px, visibility 0..1
Seen = Callable[..., bool]

NOSE, LEFT_EYE, RIGHT_EYE = 0, 2, 5
LEFT_SHOULDER, RIGHT_SHOULDER, LEFT_ELBOW, RIGHT_ELBOW, LEFT_WRIST, RIGHT_WRIST = 11, 12, 13, 14, 15, 16
LEFT_HIP, RIGHT_HIP, LEFT_KNEE, RIGHT_KNEE, LEFT_ANKLE, RIGHT_ANKLE = 23, 24, 25, 26, 27, 28
FULL_BODY_JOINTS = (NOSE, LEFT_SHOULDER, RIGHT_SHOULDER, LEFT_HIP, RIGHT_HIP, LEFT_KNEE, RIGHT_KNEE)
FULL_BODY_FEET = (LEFT_ANKLE, RIGHT_ANKLE)

VISIBLE = 0.5  # MediaPipe's own default for drawing a landmark (drawing_utils, visibility threshold)
# Arms: the angle at the shoulder between the hip and the wrist (0° hanging, 90° straight out, 180° overhead).
T_POSE_ABDUCTION = (65.0, 115.0)
STRAIGHT_ELBOW_MIN = 140.0  # hip-less elbow angle shoulder-elbow-wrist; a T-pose keeps its arms straight
ARMS_DOWN_ABDUCTION_MAX = 45.0
# Arms up: the wrist above the shoulder by at least this share of the torso (shoulder-to-hip) length.
ARMS_UP_WRIST_RISE = 0.25
# Posture: how far the knee sits below the hip, over the shin (knee-to-ankle) length — about 1 standing,
# about 0 with the thighs level (sitting, squatting); without ankles, over the torso length.
SITTING_THIGH_DROP_MAX = 0.5
SITTING_THIGH_DROP_MAX_NO_ANKLES = 0.35
STANDING_THIGH_DROP_MIN = 0.7
# Bent over: the shoulders less than this share of the upright torso length above the hips, legs under the
# body (the trunk leans forward at roughly 60° or more).
BENT_TORSO_RISE_MAX = 0.5
# Facing: shoulder width over torso length — about 0.75 square to the camera, about 0 side on.
FRONT_SHOULDER_RATIO_MIN = 0.5
SIDE_SHOULDER_RATIO_MAX = 0.25


def _visible(points: Sequence[Landmark], *indices: int, width: float, height: float) -> bool:
    margin = 0.02
    return all(
        points[i][2] >= VISIBLE
        and -margin * width <= points[i][0] <= (1 + margin) * width
        and -margin * height <= points[i][1] <= (1 + margin) * height
        for i in indices
    )


def _angle(a: Landmark, vertex: Landmark, b: Landmark) -> float:
    """The angle a-vertex-b in degrees, 0..180."""
    ax, ay = a[0] - vertex[0], a[1] - vertex[1]
    bx, by = b[0] - vertex[0], b[1] - vertex[1]
    norm = math.hypot(ax, ay) * math.hypot(bx, by)
    if norm == 0:
        return 0.0
    return math.degrees(math.acos(max(-1.0, min(1.0, (ax * bx + ay * by) / norm))))


def _mid(a: Landmark, b: Landmark) -> tuple[float, float]:
    return (a[0] + b[0]) / 2, (a[1] + b[1]) / 2


def classify_pose(points: Sequence[Landmark], width: int, height: int) -> BodyPose:
    """Tags from 33 landmarks in pixels of a `width` × `height` image.

    Raises ValueError when `points` does not hold 33 landmarks."""
    if len(points) != 33:
        raise ValueError(f"a body pose has 33 landmarks (BlazePose), got {len(points)}")

    def seen(*indices: int) -> bool:
        return _visible(points, *indices, width=width, height=height)

    p = points
    full_body = seen(*FULL_BODY_JOINTS) and seen(*FULL_BODY_FEET)
    torso = seen(LEFT_SHOULDER, RIGHT_SHOULDER, LEFT_HIP, RIGHT_HIP)
    torso_len = 0.0
    if torso:
        shoulders = _mid(p[LEFT_SHOULDER], p[RIGHT_SHOULDER])
        hips = _mid(p[LEFT_HIP], p[RIGHT_HIP])
        torso_len = math.dist(shoulders, hips)
    if torso_len <= 0:
        return BodyPose(landmarks=list(p), full_body=full_body, posture=None, arms=None, facing=None)
    return BodyPose(
        landmarks=list(p),
        full_body=full_body,
        posture=_posture(p, seen, torso_len),
        arms=_arms(p, seen, torso_len),
        facing=_facing(p, seen, torso_len),
    )


def _arms(p: Sequence[Landmark], seen: Seen, torso_len: float) -> Arms | None:
    sides = (
        (LEFT_SHOULDER, LEFT_ELBOW, LEFT_WRIST, LEFT_HIP),
        (RIGHT_SHOULDER, RIGHT_ELBOW, RIGHT_WRIST, RIGHT_HIP),
    )
    if not all(seen(shoulder, elbow, wrist) for shoulder, elbow, wrist, _hip in sides):
        return None
    abductions = [_angle(p[hip], p[shoulder], p[wrist]) for shoulder, _elbow, wrist, hip in sides]
    elbows = [_angle(p[shoulder], p[elbow], p[wrist]) for shoulder, elbow, wrist, _hip in sides]
    rises = [(p[shoulder][1] - p[wrist][1]) / torso_len for shoulder, _elbow, wrist, _hip in sides]
    low, high = T_POSE_ABDUCTION
    upright = (p[LEFT_HIP][1] + p[RIGHT_HIP][1] - p[LEFT_SHOULDER][1] - p[RIGHT_SHOULDER][1]) / 2 > (
        BENT_TORSO_RISE_MAX * torso_len
    )  # arms hanging from a body bent over stand at 90° to it too: that is no T-pose
    straight_out = all(low <= a <= high for a in abductions) and all(e >= STRAIGHT_ELBOW_MIN for e in elbows)
    if upright and straight_out:
        return Arms.T_POSE
    if all(rise >= ARMS_UP_WRIST_RISE for rise in rises):
        return Arms.UP
    if all(a <= ARMS_DOWN_ABDUCTION_MAX for a in abductions):
        return Arms.DOWN
    return None


def _posture(p: Sequence[Landmark], seen: Seen, torso_len: float) -> Posture | None:
    drops: list[float] = []
    thighs: list[float] = []
    for hip, knee, ankle in ((LEFT_HIP, LEFT_KNEE, LEFT_ANKLE), (RIGHT_HIP, RIGHT_KNEE, RIGHT_ANKLE)):
        if not seen(hip, knee):
            continue
        thighs.append(math.dist(p[hip][:2], p[knee][:2]))
        shin = math.dist(p[knee][:2], p[ankle][:2]) if seen(ankle) else 0.0
        drop = p[knee][1] - p[hip][1]
        # without the ankle, scale by the torso so that the no-ankle sitting cut lands on the same number
        scale = shin if shin > 0 else torso_len * SITTING_THIGH_DROP_MAX_NO_ANKLES / SITTING_THIGH_DROP_MAX
        drops.append(drop / scale)
    if not drops:
        return None
    drop = sum(drops) / len(drops)
    shoulders = _mid(p[LEFT_SHOULDER], p[RIGHT_SHOULDER])
    hips = _mid(p[LEFT_HIP], p[RIGHT_HIP])
    # The upright torso is about as long as the thigh; a torso seen foreshortened (bent toward the camera)
    # keeps its thighs, so compare the shoulders' rise above the hips with the thigh length.
    rise = (hips[1] - shoulders[1]) / max(sum(thighs) / len(thighs), 1e-6)
    if drop >= STANDING_THIGH_DROP_MIN:
        return Posture.BENT_OVER if rise < BENT_TORSO_RISE_MAX else Posture.STANDING
    if drop <= SITTING_THIGH_DROP_MAX:
        return Posture.SITTING
    return None


def _facing(p: Sequence[Landmark], seen: Seen, torso_len: float) -> Facing | None:
    if not seen(LEFT_SHOULDER, RIGHT_SHOULDER):
        return None
    # Seen from the front, the person's left shoulder is on the image's right.
    spread = (p[LEFT_SHOULDER][0] - p[RIGHT_SHOULDER][0]) / torso_len
    if abs(spread) <= SIDE_SHOULDER_RATIO_MAX:
        return Facing.SIDE
    face_hidden = all(p[i][2] < VISIBLE for i in (NOSE, LEFT_EYE, RIGHT_EYE))
    if spread < 0 or face_hidden:
        return Facing.BACK
    return Facing.FRONT if spread >= FRONT_SHOULDER_RATIO_MIN else Facing.THREE_QUARTER
