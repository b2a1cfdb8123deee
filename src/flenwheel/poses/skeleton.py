"""OpenPose-style skeleton images for the poses flenwheel asks for: the control images of pose ControlNets.

Each pose is 18 keypoints in OpenPose's COCO-18 order (nose, neck, right shoulder/elbow/wrist, left
shoulder/elbow/wrist, right hip/knee/ankle, left hip/knee/ankle, right/left eye, right/left ear), as
fractions of a 2:3 portrait frame (centred in an image of another shape, so the body keeps its proportions), the person seen by the camera (their right on the image's left
when they face it). They ship with the package as data (SKELETONS) and are drawn at run time the way
OpenPose's renderer draws them — black background, one colour per limb, keypoints as dots — so an OpenPose
ControlNet (lllyasviel's control_v11p_sd15_openpose, thibaud's SDXL one) reads them. Drawing is
deterministic: the same pose and size give the same PNG bytes.

`as_landmarks` turns a skeleton into the 33 BlazePose landmarks the pose tagger reads (poses/geometry.py),
so every skeleton is checked to be the pose it is named for (tests/poses/test_skeleton.py).
"""

from __future__ import annotations

import io
from collections.abc import Callable

from PIL import Image, ImageDraw

from flenwheel.errors import InvalidInput

Point = tuple[float, float] | None  # None: not drawn (hidden from the camera)

# OpenPose's limbs as keypoint index pairs (COCO-18), and its colour cycle, in the order OpenPose draws them.
LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)  # fmt: skip
COLOURS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)  # fmt: skip


def _front(arms: tuple[Point, Point, Point, Point]) -> tuple[Point, ...]:
    """A person facing the camera, standing, with the given right elbow/wrist and left elbow/wrist."""
    r_elbow, r_wrist, l_elbow, l_wrist = arms
    # fmt: off
    return (
        (0.50, 0.15), (0.50, 0.22),
        (0.34, 0.22), r_elbow, r_wrist,
        (0.66, 0.22), l_elbow, l_wrist,
        (0.40, 0.50), (0.41, 0.68), (0.41, 0.87),
        (0.60, 0.50), (0.59, 0.68), (0.59, 0.87),
        (0.47, 0.135), (0.53, 0.135), (0.44, 0.145), (0.56, 0.145),
    )
    # fmt: on


ARMS_DOWN = ((0.31, 0.35), (0.30, 0.47), (0.69, 0.35), (0.70, 0.47))
ARMS_UP = ((0.30, 0.11), (0.31, 0.02), (0.70, 0.11), (0.69, 0.02))
ARMS_OUT = ((0.19, 0.22), (0.04, 0.22), (0.81, 0.22), (0.96, 0.22))

# fmt: off
SKELETONS: dict[str, tuple[Point, ...]] = {
    "front": _front(ARMS_DOWN),
    # seen from behind: the person's right on the image's right, no face
    "back": (
        None, (0.50, 0.22),
        (0.66, 0.22), (0.69, 0.35), (0.70, 0.47),
        (0.34, 0.22), (0.31, 0.35), (0.30, 0.47),
        (0.60, 0.50), (0.59, 0.68), (0.59, 0.87),
        (0.40, 0.50), (0.41, 0.68), (0.41, 0.87),
        None, None, (0.56, 0.145), (0.44, 0.145),
    ),
    # side on, facing the image's right
    "side": (
        (0.55, 0.15), (0.50, 0.22),
        (0.49, 0.22), (0.50, 0.35), (0.52, 0.47),
        (0.51, 0.22), (0.51, 0.35), (0.53, 0.47),
        (0.49, 0.50), (0.50, 0.68), (0.49, 0.87),
        (0.51, 0.50), (0.52, 0.68), (0.51, 0.87),
        None, (0.54, 0.135), None, (0.50, 0.145),
    ),
    # turned half toward the image's right
    "three_quarter": (
        (0.53, 0.15), (0.50, 0.22),
        (0.42, 0.22), (0.40, 0.35), (0.40, 0.47),
        (0.58, 0.22), (0.60, 0.35), (0.61, 0.47),
        (0.45, 0.50), (0.45, 0.68), (0.45, 0.87),
        (0.56, 0.50), (0.56, 0.68), (0.56, 0.87),
        (0.51, 0.135), (0.55, 0.135), None, (0.56, 0.145),
    ),
    "arms_up": _front(ARMS_UP),
    "t_pose": _front(ARMS_OUT),
    # hinged at the hips, side on, facing the image's right, arms hanging
    "bent_over": (
        (0.80, 0.50), (0.72, 0.47),
        (0.71, 0.47), (0.71, 0.60), (0.71, 0.72),
        (0.73, 0.47), (0.73, 0.60), (0.73, 0.72),
        (0.45, 0.50), (0.46, 0.68), (0.46, 0.87),
        (0.47, 0.50), (0.48, 0.68), (0.48, 0.87),
        None, (0.79, 0.485), None, (0.76, 0.48),
    ),
    # on a chair, side on, facing the image's right: thighs level, shins down
    "seated": (
        (0.50, 0.20), (0.45, 0.27),
        (0.44, 0.27), (0.46, 0.40), (0.55, 0.45),
        (0.46, 0.27), (0.48, 0.40), (0.57, 0.45),
        (0.44, 0.55), (0.62, 0.56), (0.62, 0.80),
        (0.46, 0.55), (0.64, 0.56), (0.64, 0.80),
        None, (0.49, 0.185), None, (0.46, 0.195),
    ),
    # hands on a bar overhead, feet off the ground
    "hanging": (
        (0.50, 0.20), (0.50, 0.27),
        (0.34, 0.27), (0.31, 0.16), (0.32, 0.06),
        (0.66, 0.27), (0.69, 0.16), (0.68, 0.06),
        (0.40, 0.55), (0.41, 0.73), (0.42, 0.91),
        (0.60, 0.55), (0.59, 0.73), (0.58, 0.91),
        (0.48, 0.185), (0.52, 0.185), (0.46, 0.195), (0.54, 0.195),
    ),
}
# fmt: on
# The model card's body poses (seed 001) reuse the anchors' skeletons.
SKELETONS["standing"] = SKELETONS["front"]
SKELETONS["sitting"] = SKELETONS["seated"]

# COCO-18 index → BlazePose-33 index (mediapipe/python/solutions/pose.py's PoseLandmark numbering).
TO_BLAZEPOSE = {
    0: 0, 2: 12, 3: 14, 4: 16, 5: 11, 6: 13, 7: 15, 8: 24, 9: 26, 10: 28,
    11: 23, 12: 25, 13: 27, 14: 5, 15: 2, 16: 8, 17: 7,
}  # fmt: skip


def skeleton(name: str) -> tuple[Point, ...]:
    """The 18 keypoints of a named pose; InvalidInput names the known ones."""
    if name not in SKELETONS:
        raise InvalidInput(f"no skeleton named {name!r}: known poses are {', '.join(sorted(SKELETONS))}")
    return SKELETONS[name]


def render_skeleton(name: str, width: int = 512, height: int = 768) -> bytes:
    """The named pose drawn OpenPose-style as a `width` × `height` PNG (bytes), deterministic.

    Limbs are 1/128 of the shorter side thick (4 px at 512), keypoints dots of the same radius."""
    if width < 64 or height < 64:
        raise InvalidInput(f"a skeleton image needs at least 64 × 64 pixels, not {width} × {height}")
    points = skeleton(name)
    image = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    thickness = max(2, min(width, height) // 128)
    at = _frame(width, height)

    for (start, end), colour in zip(LIMBS, COLOURS, strict=False):
        a, b = points[start], points[end]
        if a is not None and b is not None:
            draw.line([at(a), at(b)], fill=tuple(c * 6 // 10 for c in colour), width=thickness * 2)
    for point, colour in zip(points, COLOURS, strict=True):
        if point is not None:
            x, y = at(point)
            draw.ellipse([x - thickness, y - thickness, x + thickness, y + thickness], fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _frame(width: int, height: int) -> Callable[[tuple[float, float]], tuple[float, float]]:
    """Fractions of the 2:3 frame → pixels of a `width` × `height` image (the frame centred in it)."""
    frame_w, frame_h = min(width, height * 2 / 3), min(height, width * 3 / 2)
    left, top = (width - frame_w) / 2, (height - frame_h) / 2
    return lambda point: (left + point[0] * frame_w, top + point[1] * frame_h)


def as_landmarks(name: str, width: int = 512, height: int = 768) -> list[tuple[float, float, float]]:
    """The named skeleton as 33 BlazePose landmarks (x px, y px, visibility), for the pose tagger."""
    at = _frame(width, height)
    marks: list[tuple[float, float, float]] = [(0.0, 0.0, 0.0)] * 33
    for coco, point in enumerate(skeleton(name)):
        if point is not None and coco in TO_BLAZEPOSE:
            marks[TO_BLAZEPOSE[coco]] = (*at(point), 1.0)
    return marks
