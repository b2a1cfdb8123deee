"""The skeleton images that ship with flenwheel: each is the pose it is named for, drawn deterministically."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from flenwheel.errors import InvalidInput
from flenwheel.evaluation.prompts import BODY_POSE_TARGETS
from flenwheel.pipeline.sheet import DEFAULT_ANCHORS
from flenwheel.poses.geometry import classify_pose
from flenwheel.poses.skeleton import SKELETONS, as_landmarks, render_skeleton

TARGETS = {**{a.id: a.pose for a in DEFAULT_ANCHORS}, **BODY_POSE_TARGETS}


@pytest.mark.parametrize("size", [(512, 768), (512, 512), (768, 512)])
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_anchor_and_body_prompt_skeleton_measures_as_its_pose(name: str, size: tuple[int, int]) -> None:
    target = TARGETS[name]
    assert target is not None
    body = classify_pose(as_landmarks(name, *size), *size)
    check = target.check(body)
    assert check.status == "passed", (name, check.reason)


def test_skeletons_are_drawn_deterministically_openpose_style() -> None:
    assert set(TARGETS) <= set(SKELETONS)
    first = render_skeleton("t_pose", 256, 384)
    assert first == render_skeleton("t_pose", 256, 384) and first != render_skeleton("front", 256, 384)
    image = Image.open(io.BytesIO(first)).convert("RGB")
    assert image.size == (256, 384) and image.getpixel((0, 0)) == (0, 0, 0)
    colours = {colour for _count, colour in image.getcolors(maxcolors=100_000) or []}
    assert (255, 0, 0) in colours and len(colours) > 10  # OpenPose's per-keypoint colours
    with pytest.raises(InvalidInput, match="known poses are"):
        render_skeleton("cartwheel")
