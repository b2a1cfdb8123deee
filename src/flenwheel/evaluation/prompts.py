"""The model-card prompt set of seed 001: 5 angles × 4 expressions + 3 body poses = 23 fixed prompts.

Each prompt has a stable key ("front-neutral", "profile_left-smiling", "full_body-standing") and a fixed
seed derived from that key, so every checkpoint and strength draws from the same noise and the same prompt.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from flenwheel.domain import Arms, Facing, Frozen, Posture
from flenwheel.errors import InvalidInput
from flenwheel.poses.target import PoseTarget

ANGLES: dict[str, str] = {
    "front": "front view",
    "half_left": "half-left view",
    "profile_left": "profile-left view",
    "half_right": "half-right view",
    "profile_right": "profile-right view",
}
EXPRESSIONS: dict[str, str] = {
    "neutral": "neutral expression",
    "smiling": "smiling",
    "angry": "angry expression",
    "sad": "sad expression",
}
# Seed 001 "Prompt Templates", with the trigger ("ohwx_char person") put in by `model_card_prompts`.
PORTRAIT_TEMPLATE = "portrait of {trigger}, {expression}, {angle}, clean background, studio lighting"
BODY_POSES: dict[str, str] = {
    "t_pose": "full body photo of {trigger} in T-pose, front view, white background",
    "standing": "full body photo of {trigger} standing, front view, neutral pose, clean background",
    "sitting": "full body photo of {trigger} sitting on a chair, side view, clean background",
}
# The body pose each body prompt asks for (measured with MediaPipe Pose; poses/target.py). The sitting prompt
# says "side view", but a chair seen from the front is still a seat: only the posture is checked there.
BODY_POSE_TARGETS: dict[str, PoseTarget] = {
    "t_pose": PoseTarget(arms=Arms.T_POSE, facing=(Facing.FRONT,)),
    "standing": PoseTarget(posture=Posture.STANDING, facing=(Facing.FRONT,)),
    "sitting": PoseTarget(posture=Posture.SITTING),
}


def pose_target(prompt_key: str) -> PoseTarget | None:
    """The pose a model-card prompt key asks for ("full_body-t_pose" → T-pose), None for portraits."""
    kind, _, pose = prompt_key.partition("-")
    return BODY_POSE_TARGETS.get(pose) if kind == "full_body" else None


# A first look in a fifth of the time: one prompt per angle, every expression, one body pose.
QUICK_KEYS = (
    "front-neutral",
    "half_left-smiling",
    "profile_left-angry",
    "half_right-sad",
    "profile_right-neutral",
    "full_body-standing",
)
PromptSetName = Literal["all", "quick"]


class EvaluationPrompt(Frozen):
    """One model-card image: what to draw, for which angle/expression/pose, from which seed."""

    key: str = Field(pattern=r"^[a-z_]+-[a-z_]+$")
    text: str
    angle: str | None  # a key of ANGLES; None for body poses
    expression: str | None  # a key of EXPRESSIONS; None for body poses
    pose: str  # "portrait" or a key of BODY_POSES
    seed: int = Field(ge=0, le=2**32 - 1)


def prompt_seed(key: str) -> int:
    """A fixed seed per prompt key: the same on every machine and in every release."""
    return int.from_bytes(hashlib.sha256(f"flenwheel-model-card:{key}".encode()).digest()[:4], "big")


def model_card_prompts(trigger: str) -> tuple[EvaluationPrompt, ...]:
    """All 23 prompts with `trigger` (token + class word, e.g. "ohwx_char person") inserted."""
    prompts = [
        EvaluationPrompt(
            key=f"{angle}-{expression}",
            text=PORTRAIT_TEMPLATE.format(trigger=trigger, expression=expression_text, angle=angle_text),
            angle=angle,
            expression=expression,
            pose="portrait",
            seed=prompt_seed(f"{angle}-{expression}"),
        )
        for angle, angle_text in ANGLES.items()
        for expression, expression_text in EXPRESSIONS.items()
    ]
    prompts += [
        EvaluationPrompt(
            key=f"full_body-{pose}",
            text=template.format(trigger=trigger),
            angle=None,
            expression=None,
            pose=pose,
            seed=prompt_seed(f"full_body-{pose}"),
        )
        for pose, template in BODY_POSES.items()
    ]
    return tuple(prompts)


def select_prompts(
    trigger: str, which: PromptSetName | Sequence[str] = "all"
) -> tuple[EvaluationPrompt, ...]:
    """The whole set, the quick set, or the prompts with the given keys (in model-card order)."""
    every = model_card_prompts(trigger)
    if which == "all":
        return every
    keys = QUICK_KEYS if which == "quick" else tuple(which)
    known = {prompt.key for prompt in every}
    unknown = [key for key in keys if key not in known]
    if unknown or not keys:
        raise InvalidInput(
            f"unknown prompt key(s) {unknown or keys!r}: use 'all', 'quick' or keys such as "
            f"{', '.join(sorted(known)[:3])} (see flenwheel.evaluation.prompts)"
        )
    wanted = set(keys)
    return tuple(prompt for prompt in every if prompt.key in wanted)
