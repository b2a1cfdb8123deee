"""Per checkpoint × strength statistics, a joint score, and the pick — with the reason in plain words.

Success (seed 001 "generates correctly on first try", target ≥ 80 %): the image shows a face whose identity
distance to the character is within the threshold, it is not a near copy of a training image, it is not
flagged NSFW (unless the character is an NSFW character), and — for a body prompt (T-pose, standing,
sitting) — the measured body pose is the one asked for ("not measurable", no person found, never passes). Identity similarity is 1 − distance, averaged over
the images with a face that are not near copies; spread is its standard deviation.

Joint score = success rate + ½ · mean similarity − ½ · spread − near-copy rate. Ties go to the earlier
checkpoint (less overfit) and then to the lower strength.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from pydantic import Field

from flenwheel.domain import Frozen
from flenwheel.errors import InvalidInput
from flenwheel.evaluation.grid import CheckpointRef, strength_text
from flenwheel.poses.target import PoseStatus
from flenwheel.safety import NSFW_THRESHOLD

SUCCESS_TARGET = 0.80
SIMILARITY_WEIGHT = 0.5
SPREAD_WEIGHT = 0.5
NEAR_COPY_PENALTY = 1.0


class SampleRecord(Frozen):
    """One scored image as stored in `evaluation_sample`."""

    checkpoint_id: int
    strength: float
    prompt_key: str
    asset_id: int | None = None
    face_found: bool
    identity_distance: float | None = None
    near_copy: bool = False
    nsfw_score: float | None = None
    adherence: float | None = None
    pose: PoseStatus | None = None  # the body prompt's pose check; None for a portrait prompt

    @property
    def similarity(self) -> float | None:
        return None if self.identity_distance is None else max(0.0, 1.0 - self.identity_distance)

    @property
    def nsfw(self) -> bool:
        return self.nsfw_score is not None and self.nsfw_score >= NSFW_THRESHOLD

    def success(self, threshold: float, allow_nsfw: bool) -> bool:
        match = self.face_found and self.identity_distance is not None and self.identity_distance <= threshold
        pose_ok = self.pose is None or self.pose == "passed"
        return match and pose_ok and not self.near_copy and (allow_nsfw or not self.nsfw)


class CellSummary(Frozen):
    """One checkpoint at one strength, over the prompt set."""

    checkpoint_id: int
    step: int
    epoch: int | None
    strength: float
    images: int = Field(ge=0)
    faces: int = Field(ge=0)
    successes: int = Field(ge=0)
    success_rate: float = Field(ge=0.0, le=1.0)
    near_copies: int = Field(ge=0)
    nsfw_flags: int = Field(ge=0)
    mean_distance: float | None
    mean_similarity: float | None
    spread: float | None
    joint_score: float
    meets_target: bool
    pose_checked: int = Field(default=0, ge=0)  # images of body prompts
    pose_passed: int = Field(default=0, ge=0)  # of those, in the pose asked for

    @property
    def label(self) -> str:
        return f"step {self.step}" + (f" (epoch {self.epoch})" if self.epoch is not None else "")


class Selection(Frozen):
    """The chosen checkpoint and strength, and why."""

    checkpoint_id: int
    step: int
    epoch: int | None
    strength: float
    success_rate: float
    mean_similarity: float | None
    joint_score: float
    meets_target: bool
    measured: bool  # False when no image showed a face: the pick followed the tie rule only
    reason: str


def summarise_cells(
    samples: Sequence[SampleRecord],
    checkpoints: Sequence[CheckpointRef],
    strengths: Sequence[float],
    threshold: float,
    allow_nsfw: bool = False,
) -> list[CellSummary]:
    """One summary per checkpoint × strength, in training order then strength order."""
    cells: dict[tuple[int, float], list[SampleRecord]] = {}
    for sample in samples:
        cells.setdefault((sample.checkpoint_id, round(sample.strength, 4)), []).append(sample)
    summaries = []
    for checkpoint in sorted(checkpoints, key=lambda c: (c.step, c.id)):
        for strength in sorted(round(s, 4) for s in strengths):
            summaries.append(
                _summary(
                    checkpoint, strength, cells.get((checkpoint.id, strength), []), threshold, allow_nsfw
                )
            )
    return summaries


def _summary(
    checkpoint: CheckpointRef,
    strength: float,
    samples: list[SampleRecord],
    threshold: float,
    allow_nsfw: bool,
) -> CellSummary:
    images = len(samples)
    successes = sum(sample.success(threshold, allow_nsfw) for sample in samples)
    near_copies = sum(sample.near_copy for sample in samples)
    measured = [s for s in samples if s.identity_distance is not None and not s.near_copy]
    distances = [s.identity_distance for s in measured if s.identity_distance is not None]
    similarities = [max(0.0, 1.0 - d) for d in distances]
    mean_similarity = statistics.fmean(similarities) if similarities else None
    spread = statistics.pstdev(similarities) if similarities else None
    success_rate = successes / images if images else 0.0
    joint = (
        success_rate
        + SIMILARITY_WEIGHT * (mean_similarity or 0.0)
        - SPREAD_WEIGHT * (spread or 0.0)
        - NEAR_COPY_PENALTY * (near_copies / images if images else 0.0)
    )
    return CellSummary(
        checkpoint_id=checkpoint.id,
        step=checkpoint.step,
        epoch=checkpoint.epoch,
        strength=strength,
        images=images,
        faces=sum(sample.face_found for sample in samples),
        successes=successes,
        success_rate=round(success_rate, 4),
        near_copies=near_copies,
        nsfw_flags=sum(sample.nsfw for sample in samples),
        mean_distance=_rounded(statistics.fmean(distances) if distances else None),
        mean_similarity=_rounded(mean_similarity),
        spread=_rounded(spread),
        joint_score=round(joint, 4),
        meets_target=success_rate >= SUCCESS_TARGET,
        pose_checked=sum(sample.pose is not None for sample in samples),
        pose_passed=sum(sample.pose == "passed" for sample in samples),
    )


class PoseSuccess(Frozen):
    """One body prompt's pose checks over the evaluated images (every checkpoint × strength)."""

    prompt_key: str
    asked: str  # the pose asked for, in words
    images: int
    passed: int
    drifted: int
    not_measurable: int


def pose_success(samples: Sequence[SampleRecord], asked: dict[str, str]) -> list[PoseSuccess]:
    """Per body prompt key in `asked` (key → pose in words), how many images showed the pose."""
    found = []
    for key, words in asked.items():
        own = [s for s in samples if s.prompt_key == key and s.pose is not None]
        if not own:
            continue
        found.append(
            PoseSuccess(
                prompt_key=key,
                asked=words,
                images=len(own),
                passed=sum(s.pose == "passed" for s in own),
                drifted=sum(s.pose == "drifted" for s in own),
                not_measurable=sum(s.pose == "not measurable" for s in own),
            )
        )
    return found


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def rank_cells(cells: Sequence[CellSummary]) -> list[CellSummary]:
    """Best first: highest joint score; ties to the earlier checkpoint, then the lower strength."""
    return sorted(cells, key=lambda c: (-c.joint_score, c.step, c.checkpoint_id, c.strength))


def select_best(cells: Sequence[CellSummary], threshold: float) -> Selection:
    """The best cell by joint score, with a reason that quotes the numbers."""
    if not cells:
        raise InvalidInput("nothing was evaluated: the grid is empty")
    ranked = rank_cells(cells)
    best = ranked[0]
    total_images = sum(c.images for c in cells)
    measured = any(c.faces for c in cells)
    where = f"{best.label} at strength {strength_text(best.strength)}"
    if not measured:
        reason = (
            f"No face was found in any of the {total_images} evaluation images, so likeness could not be "
            f"measured. {where[0].upper()}{where[1:]} was chosen only by the tie rule (earliest checkpoint, "
            "lowest strength), not by evidence."
        )
    else:
        target = "target 80 % met" if best.meets_target else "below the 80 % target — see the advice"
        likeness = (
            f"mean identity similarity {best.mean_similarity:.2f} (± {best.spread or 0.0:.2f})"
            if best.mean_similarity is not None
            else "no face that could be compared"
        )
        reason = (
            f"Chose {where}: {best.successes} of {best.images} images ({best.success_rate:.0%}) show the "
            f"character on the first try ({target}), {likeness}; a face counts as the character at identity "
            f"distance ≤ {threshold:.2f}. Joint score {best.joint_score:.2f}"
        )
        if len(ranked) > 1:
            runner = ranked[1]
            reason += (
                f"; the next best is {runner.label} at strength {strength_text(runner.strength)} "
                f"({runner.success_rate:.0%}, joint {runner.joint_score:.2f})"
            )
            if runner.joint_score == best.joint_score:
                reason += " — a tie, so the earlier checkpoint / lower strength wins (less overfit)"
        reason += "."
        if best.near_copies:
            reason += f" {best.near_copies} of its images are near copies of training images."
    return Selection(
        checkpoint_id=best.checkpoint_id,
        step=best.step,
        epoch=best.epoch,
        strength=best.strength,
        success_rate=best.success_rate,
        mean_similarity=best.mean_similarity,
        joint_score=best.joint_score,
        meets_target=best.meets_target,
        measured=measured,
        reason=reason,
    )
