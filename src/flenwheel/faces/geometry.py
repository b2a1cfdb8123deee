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


# The smile score: mouth width plus SMILE_LIFT_WEIGHT × how far the mouth corners sit above the lips' centre
# line, both over the outer-eye-corner distance. Weight and threshold were fitted on the London set's 40
# neutral/smiling pairs (71 of 80 right when each person is left out of the fit in turn; the old width-only
# rule at 0.60 got 65). Within SMILE_UNSURE of the threshold the call is no better than a coin toss there,
# so the analysis records no expression and the caption leaves the clause out rather than train a wrong
# word (bench/calibrate_identity.py prints the accuracy of all calls and of the confident ones).
SMILE_LIFT_WEIGHT = 1.1
SMILE_THRESHOLD = 0.641
SMILE_UNSURE = 0.02


def smile_score(points: list[tuple[float, float]]) -> float:
    """(mouth width + SMILE_LIFT_WEIGHT × corner lift) / outer-eye distance; larger means more of a smile."""
    eyes = math.dist(points[36], points[45])
    if eyes <= 0:
        return 0.0
    mouth = math.dist(points[48], points[54])
    centre = (points[51][1] + points[57][1]) / 2
    lift = centre - (points[48][1] + points[54][1]) / 2  # image y grows downward: corners above → positive
    return (mouth + SMILE_LIFT_WEIGHT * lift) / eyes


def expression_of(face: Face) -> Expression:
    """The smile rule's call, however close to the threshold (see `expression_confidence`)."""
    return Expression.SMILING if smile_score(face.landmarks) >= SMILE_THRESHOLD else Expression.NEUTRAL


def expression_confidence(face: Face) -> float:
    """0 at the threshold, 1 at 2 × SMILE_UNSURE from it or farther; below 0.5 the call is unsure."""
    return min(1.0, abs(smile_score(face.landmarks) - SMILE_THRESHOLD) / (2 * SMILE_UNSURE))


def sure_expression(face: Face) -> Expression | None:
    """The call when it is confident (≥ 0.5), else None: no expression recorded, none written in captions."""
    return expression_of(face) if expression_confidence(face) >= 0.5 else None


# Point i of a face's mirror image is point MIRROR_68[i] of the face itself, x negated (iBUG 300-W order:
# jaw, brows, nose bridge, nostrils, eyes, outer lips, inner lips; left and right are the image's).
MIRROR_68 = (
    *range(16, -1, -1),
    *range(26, 16, -1),
    27, 28, 29, 30,
    35, 34, 33, 32, 31,
    45, 44, 43, 42, 47, 46,
    39, 38, 37, 36, 41, 40,
    54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55,
    64, 63, 62, 61, 60, 67, 66, 65,
)  # fmt: skip
