"""Enums and frozen value types shared by every layer. No I/O here."""

from __future__ import annotations

import re
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class Frozen(BaseModel):
    """Base for value types: immutable, and unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class AssetKind(StrEnum):
    SOURCE = "source"
    BASE = "base"
    ANCHOR = "anchor"
    VARIATION = "variation"
    ENRICHED = "enriched"
    SYNTHETIC = "synthetic"
    GENERATED = "generated"
    EDITED = "edited"
    UPSCALED = "upscaled"
    CORRECTED = "corrected"  # a person's corrected version of a needs_correction image (flywheel 2's target)
    EVALUATION = "evaluation"  # drawn by a checkpoint during evaluation; never enters a dataset


# Kinds that curation labels and datasets may contain (evaluation images measure a LoRA; they never train one).
DATASET_KINDS = tuple(kind.value for kind in AssetKind if kind is not AssetKind.EVALUATION)
# Kinds that curate gates and labels. Synthetic images (flywheel 1) are judged by the flywheel's own filter
# and review (pipeline/flywheel.py) and enter a dataset only as pristine; the character's identity is never
# defined by images a LoRA drew.
CURATED_KINDS = tuple(kind for kind in DATASET_KINDS if kind != AssetKind.SYNTHETIC.value)


class ReviewLabel(StrEnum):
    """The three labels of seed 001 step 1.3; step 1.7's `pristine`: a synthetic image that passed the
    strict bar (perfect match, anatomy, no artifacts, fills a gap) and enters the next dataset version
    (pristine is counted apart from good; a synthetic image enters a dataset only as pristine); and the
    gate's `needs_review` for a photo it could not decide (identity in the band between the strict and loose
    thresholds): a person looks first; not for training until they label it. Users set USER_LABELS."""

    GOOD = "good"
    NEEDS_CORRECTION = "needs_correction"
    REJECT = "reject"
    PRISTINE = "pristine"
    NEEDS_REVIEW = "needs_review"


# Labels that put an image into the next dataset version (datasets/versions.py).
TRAINING_LABELS = (ReviewLabel.GOOD, ReviewLabel.PRISTINE)
# Labels a user may set (needs_review is the gate's alone).
USER_LABELS = (ReviewLabel.GOOD, ReviewLabel.NEEDS_CORRECTION, ReviewLabel.REJECT, ReviewLabel.PRISTINE)


class ReviewSource(StrEnum):
    GATE = "gate"  # suggested by curate or by the flywheel's filter
    POLICY = (
        "policy"  # the flywheel's `--auto MARGIN` policy (pipeline/flywheel.py); a user label wins over it
    )
    USER = "user"  # set with `flenwheel review`; always wins over a suggestion


class Angle(StrEnum):
    """Head yaw bucket, named from the viewer's side: `left` means the face turns toward image left."""

    FRONT = "front"
    THREE_QUARTER_LEFT = "three-quarter left"
    THREE_QUARTER_RIGHT = "three-quarter right"
    PROFILE_LEFT = "profile left"
    PROFILE_RIGHT = "profile right"


class Shot(StrEnum):
    CLOSE_UP = "close-up"
    UPPER_BODY = "upper body"
    FULL_BODY = "full body"


class Expression(StrEnum):
    NEUTRAL = "neutral"
    SMILING = "smiling"


class QualityMetrics(Frozen):
    """Measured image quality; thresholds live in `quality.QualityThresholds`."""

    width: int
    height: int
    sharpness: float  # variance of the Laplacian on a 512 px grey copy
    brightness: float  # mean luminance 0..1 of the subject (the plain background left out)
    clipped_dark: float  # fraction of the subject's pixels at the bottom of the range
    clipped_bright: float
    phash: str  # 64-bit perceptual hash, 16 hex digits
    phash_mirror: str | None = (
        None  # the same of the mirror image; None in analyses made before it was measured
    )
    # Share of the frame that is a plain, border-connected background, left out of the exposure figures
    # (quality.uniform_background); None in analyses made before it was measured.
    background: float | None = None
    chroma: float | None = None  # mean (max - min channel) / 255: ~0 for greyscale; None before measured


class Face(Frozen):
    """One detected face, in the coordinates of the stored (normalised) image."""

    box: tuple[int, int, int, int]  # left, top, right, bottom
    landmarks: list[tuple[float, float]]  # 68 points (iBUG 300-W order)
    embedding: list[float] = Field(min_length=128, max_length=128)
    yaw: float  # degrees, negative = turned toward image left
    detector_score: float

    @property
    def area(self) -> int:
        left, top, right, bottom = self.box
        return max(0, right - left) * max(0, bottom - top)


class Posture(StrEnum):
    """What the body does, from the joint angles of a body-pose model (poses/geometry.py)."""

    STANDING = "standing"
    SITTING = "sitting"  # on a chair, on the floor, or in a deep squat: thighs level with the hips
    BENT_OVER = "bent over"


class Arms(StrEnum):
    DOWN = "arms down"
    UP = "arms up"  # both hands above the shoulders
    T_POSE = "T-pose"  # both arms straight out at shoulder height


class Facing(StrEnum):
    """Which way the body (shoulders and hips, not the head) faces the camera."""

    FRONT = "front"
    THREE_QUARTER = "three-quarter"
    SIDE = "side"
    BACK = "back"


class BodyPose(Frozen):
    """One person's body pose: 33 landmarks (MediaPipe Pose / BlazePose topology) and what they say.

    `landmarks` are (x, y, visibility) with x, y in pixels of the analysed image and visibility 0..1. A field
    that the visible joints cannot decide is None (unknown), never a guess."""

    landmarks: list[tuple[float, float, float]] = Field(min_length=33, max_length=33)
    full_body: bool  # head, hips, knees and ankles all visible inside the frame
    posture: Posture | None
    arms: Arms | None
    facing: Facing | None

    @property
    def tags(self) -> list[str]:
        """Human-readable tags, e.g. ["full body", "standing", "T-pose", "facing front"]."""
        tags = ["full body" if self.full_body else "partial body"]
        tags += [value.value for value in (self.posture, self.arms) if value is not None]
        if self.facing is not None:
            tags.append(f"facing {self.facing.value}")
        return tags


class AssetAnalysis(Frozen):
    """Everything curate derives from one image; computed once per asset and cached."""

    analyzer: str
    quality: QualityMetrics
    faces: list[Face]
    angle: Angle | None
    shot: Shot | None
    expression: Expression | None
    # The body-pose model that looked (None in analyses cached before pose was measured: curate adds it);
    # `body` is None when it found no person.
    pose_analyzer: str | None = None
    body: BodyPose | None = None


TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,47}$")
CLASS_PATTERN = re.compile(r"^[A-Za-z][A-Za-z ]{0,31}$")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-. ]{0,63}$")
