"""Coverage of the model card (seed 001): which of its 23 cells the measured tags of a good set fill.

The model card asks for 5 angles × 4 expressions (portraits) + 3 body poses. What flenwheel measures per
image (faces/geometry.py via datasets/analysis.py): the head-yaw bucket (5 angles), the shot type (close-up,
upper body, full body), the expression — but only neutral versus smiling — and the body pose (MediaPipe
Pose, poses/; checked against the body prompt's target as evaluation checks it, evaluation/prompts.py
BODY_POSE_TARGETS, with the whole body in frame). So a cell's state is:

- `covered` — at least `enough` images carry the cell's measured tags;
- `thin` — some images, fewer than `enough`;
- `missing` — measured, and no image has these tags;
- `not measured` — the tags cannot be measured here: angry and sad (no expression model tells them from
  neutral), and the pose of full-body images analysed before poses were measured. The count given is what
  *was* measured (e.g. faces at that angle, of any expression); a cell whose measurable part is absent (no face
  at that angle at all) is `missing`, since no unmeasured tag can fill it.

`gap_order` ranks cells for the flywheel's prompt matrix (step 1.7's "fills a gap", made explicit):
missing first, then thin, then not measured, then covered.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

from pydantic import Field

from flenwheel.domain import Angle, AssetAnalysis, BodyPose, Expression, Frozen, Shot
from flenwheel.evaluation.prompts import ANGLES, BODY_POSE_TARGETS, BODY_POSES, EXPRESSIONS

# The model card's angle keys (evaluation/prompts.py) for the measured yaw buckets (domain.Angle).
ANGLE_KEYS: dict[Angle, str] = {
    Angle.FRONT: "front",
    Angle.THREE_QUARTER_LEFT: "half_left",
    Angle.PROFILE_LEFT: "profile_left",
    Angle.THREE_QUARTER_RIGHT: "half_right",
    Angle.PROFILE_RIGHT: "profile_right",
}
# Expressions the analyser tells apart (datasets/analysis.py: mouth-corner geometry); the others are not measured.
MEASURED_EXPRESSIONS: dict[Expression, str] = {Expression.NEUTRAL: "neutral", Expression.SMILING: "smiling"}
ENOUGH = 2  # images per cell before it counts as covered (two different draws of the same look)

CellState = Literal["covered", "thin", "missing", "not measured"]
GAP_RANK: dict[str, int] = {"missing": 0, "thin": 1, "not measured": 2, "covered": 3}


class ImageTags(Frozen):
    """The measured tags of one image (None: not measured, e.g. no face found)."""

    angle: Angle | None = None
    shot: Shot | None = None
    expression: Expression | None = None
    pose_measured: bool = False  # False: analysed before body poses were measured
    body: BodyPose | None = None  # None: no person found (when measured)

    @classmethod
    def of(cls, analysis: AssetAnalysis) -> ImageTags:
        return cls(
            angle=analysis.angle,
            shot=analysis.shot,
            expression=analysis.expression,
            pose_measured=analysis.pose_analyzer is not None,
            body=analysis.body,
        )

    def in_pose(self, pose: str) -> bool:
        """Whether the whole body is in frame in the pose the model card's `pose` cell asks for."""
        body = self.body
        return body is not None and body.full_body and BODY_POSE_TARGETS[pose].check(body).status == "passed"


class CoverageCell(Frozen):
    """One model-card cell: its key (as in evaluation/prompts.py), what it asks for, and what the set has."""

    key: str = Field(pattern=r"^[a-z_]+-[a-z_]+$")
    angle: str | None  # a key of ANGLES; None for body poses
    expression: str | None  # a key of EXPRESSIONS; None for body poses
    pose: str  # "portrait" or a key of BODY_POSES
    count: int = Field(ge=0)  # images with the cell's measured tags (all of them, when fully measured)
    state: CellState
    why: str


class Coverage(Frozen):
    """The model card's 23 cells over a set of images, and the shot mix."""

    images: int = Field(ge=0)
    cells: tuple[CoverageCell, ...]
    shots: dict[str, int]
    unmeasured_images: int = Field(ge=0)  # images without a face: no angle or expression could be read

    def count(self, state: CellState) -> int:
        return sum(1 for cell in self.cells if cell.state == state)

    def cell(self, key: str) -> CoverageCell:
        return next(cell for cell in self.cells if cell.key == key)

    def gap_order(self) -> list[CoverageCell]:
        """Cells ranked for filling: missing, thin, not measured, covered; model-card order within a rank."""
        return sorted(self.cells, key=lambda cell: GAP_RANK[cell.state])

    def gaps(self) -> list[CoverageCell]:
        """The cells the set lacks or cannot be shown to have (everything but `covered`)."""
        return [cell for cell in self.gap_order() if cell.state != "covered"]


def coverage(tags: Iterable[ImageTags], enough: int = ENOUGH) -> Coverage:
    """Count the measured tags of `tags` into the 23 model-card cells (see the module docstring for states)."""
    items = list(tags)
    cells: list[CoverageCell] = []
    for angle_key in ANGLES:
        at_angle = [t for t in items if t.angle is not None and ANGLE_KEYS[t.angle] == angle_key]
        for expression_key in EXPRESSIONS:
            key = f"{angle_key}-{expression_key}"
            measured = expression_key in MEASURED_EXPRESSIONS.values()
            if measured:
                count = sum(
                    1
                    for t in at_angle
                    if t.expression is not None and MEASURED_EXPRESSIONS.get(t.expression) == expression_key
                )
                state = _state(count, enough)
                why = f"{count} image(s) measured at {angle_key} with a {expression_key} expression"
            else:
                count = len(at_angle)
                if count == 0:
                    state, why = "missing", f"no image at {angle_key} at all (any expression)"
                else:
                    state = "not measured"
                    why = (
                        f"{count} image(s) at {angle_key}; whether any is {expression_key} is not measured "
                        "(the analyser tells only neutral from smiling)"
                    )
            cells.append(
                CoverageCell(
                    key=key,
                    angle=angle_key,
                    expression=expression_key,
                    pose="portrait",
                    count=count,
                    state=state,
                    why=why,
                )
            )
    unmeasured = sum(1 for t in items if not t.pose_measured and t.shot == Shot.FULL_BODY)
    for pose in BODY_POSES:
        count = sum(1 for t in items if t.pose_measured and t.in_pose(pose))
        target = BODY_POSE_TARGETS[pose].description
        if count or not unmeasured:
            state = _state(count, enough)
            why = f"{count} image(s) measured in full body, {target}"
        else:
            state = "not measured"
            why = f"{unmeasured} full-body image(s) analysed before poses were measured (run curate)"
        cells.append(
            CoverageCell(
                key=f"full_body-{pose}",
                angle=None,
                expression=None,
                pose=pose,
                count=count if state != "not measured" else unmeasured,
                state=state,
                why=why,
            )
        )
    return Coverage(
        images=len(items),
        cells=tuple(cells),
        shots={shot.value: sum(1 for t in items if t.shot == shot) for shot in Shot},
        unmeasured_images=sum(1 for t in items if t.angle is None),
    )


def _state(count: int, enough: int) -> CellState:
    if count == 0:
        return "missing"
    return "covered" if count >= enough else "thin"


def coverage_change(before: Coverage, after: Coverage) -> list[dict[str, object]]:
    """Per cell whose count or state changed: key, before and after (count, state)."""
    changes: list[dict[str, object]] = []
    for old, new in zip(before.cells, after.cells, strict=True):
        if (old.count, old.state) != (new.count, new.state):
            changes.append(
                {
                    "key": old.key,
                    "before": {"count": old.count, "state": old.state},
                    "after": {"count": new.count, "state": new.state},
                }
            )
    return changes


def cell_tags(key: str) -> tuple[str | None, str | None, str]:
    """angle key, expression key and pose of a cell key ("half_left-sad", "full_body-sitting")."""
    head, tail = key.split("-", 1)
    if head == "full_body":
        return None, None, tail
    return head, tail, "portrait"


def matches(tags: ImageTags, key: str) -> bool:
    """Whether an image's measured tags put it in cell `key` (an unmeasured expression never matches)."""
    angle, expression, pose = cell_tags(key)
    if pose != "portrait":
        return tags.pose_measured and tags.in_pose(pose)
    return (
        tags.angle is not None
        and ANGLE_KEYS[tags.angle] == angle
        and tags.expression is not None
        and MEASURED_EXPRESSIONS.get(tags.expression) == expression
    )


def fills_gap(tags: ImageTags, gaps: Sequence[CoverageCell]) -> str | None:
    """The key of the first gap cell (missing or thin) the image is measured to fill, else None."""
    for cell in gaps:
        if cell.state in ("missing", "thin") and matches(tags, cell.key):
            return cell.key
    return None
