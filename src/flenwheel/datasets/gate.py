"""The curation gates as a pure function: quality, face presence, identity, crowding and near-duplicates.

Each asset gets one suggested review label with a reason a user can act on. Nothing here touches the store.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flenwheel.domain import AssetAnalysis, ReviewLabel
from flenwheel.faces.identity import IdentityReference, find_identity
from flenwheel.quality import QualityThresholds, hash_distance, is_greyscale, quality_problems

# A second face at least this share of the main face's area makes the image a multi-person shot.
CROWD_AREA_SHARE = 0.25


@dataclass(frozen=True)
class GateInput:
    asset_id: int
    name: str
    analysis: AssetAnalysis
    is_reference: bool
    transparent: bool = False  # the upload had transparent pixels, flattened onto white at ingest
    # "identity": the character's face decides (the character subset); "body": a face-less body photo of
    # seed 002's body-realism subset, kept for its quality and a visible body (datasets/subsets.py).
    gate: str = "identity"


@dataclass(frozen=True)
class Suggestion:
    label: ReviewLabel
    reason: str
    identity_distance: float | None


@dataclass(frozen=True)
class GateResult:
    identity: IdentityReference | None  # None when no photo shows a usable face: nothing to compare
    threshold: float
    suggestions: dict[int, Suggestion]


def run_gates(
    items: list[GateInput], threshold: float, duplicate_bits: int, thresholds: QualityThresholds
) -> GateResult:
    suggestions: dict[int, Suggestion] = {}
    usable: list[GateInput] = []
    bodies: list[GateInput] = []
    for item in items:
        problems = quality_problems(item.analysis.quality, thresholds)
        if item.gate == "body":
            problems.extend(_body_problems(item))
            if problems:
                reason = "; ".join(problems) + _transparency_note(item)
                suggestions[item.asset_id] = Suggestion(ReviewLabel.REJECT, reason, None)
            else:
                bodies.append(item)
            continue
        if not item.analysis.faces:
            problems.insert(0, "no face found")
        if problems:
            reason = "; ".join(problems) + _transparency_note(item)
            suggestions[item.asset_id] = Suggestion(ReviewLabel.REJECT, reason, None)
        else:
            usable.append(item)

    _keep_bodies(bodies, duplicate_bits, suggestions)
    if not usable:
        return GateResult(None, threshold, suggestions)
    main_faces = {item.asset_id: np.asarray(item.analysis.faces[0].embedding) for item in usable}
    references = [item.asset_id for item in usable if item.is_reference]
    identity = find_identity(main_faces, references, threshold)

    survivors: list[tuple[GateInput, float]] = []
    for item in usable:
        suggestion = _identity_decision(item, identity, threshold)
        if suggestion is None:
            distance = identity.distance(main_faces[item.asset_id], item.asset_id)
            survivors.append((item, distance))
        else:
            suggestions[item.asset_id] = suggestion

    # Near-duplicates: keep the reference, else the colour copy, else the sharpest, largest; the rest point at it.
    survivors.sort(key=lambda pair: _keep_priority(pair[0]), reverse=True)
    kept: list[GateInput] = []
    for item, distance in survivors:
        twin = next(
            (
                other
                for other in kept
                if hash_distance(other.analysis.quality.phash, item.analysis.quality.phash) <= duplicate_bits
            ),
            None,
        )
        if twin is not None:
            reason = f"near-duplicate of asset {twin.asset_id} ({twin.name}); keeping {_why_kept(twin, item)}"
            suggestions[item.asset_id] = Suggestion(ReviewLabel.REJECT, reason, distance)
            continue
        kept.append(item)
        note = _background_faces_note(item) + _transparency_note(item)
        reason = f"the character (distance {distance:.2f} ≤ {threshold:.2f}){note}"
        suggestions[item.asset_id] = Suggestion(ReviewLabel.GOOD, reason, distance)
    return GateResult(identity, threshold, suggestions)


def _body_problems(item: GateInput) -> list[str]:
    """Why a body-subset photo is not a usable face-less body photo: no person found by the body-pose model,
    or a clear face in it (which belongs in the identity-gated character subset)."""
    analysis = item.analysis
    if analysis.pose_analyzer is None:
        return ["no body measure yet (the body-pose model has not looked): run curate again"]
    if analysis.body is None:
        return [
            "no body found by the body-pose model (it needs most of a person: torso, hips or legs in view)"
        ]
    if analysis.faces:
        return ["a face is visible: the body subset is for face-less photos; ingest it without --subset"]
    return []


def _keep_bodies(bodies: list[GateInput], duplicate_bits: int, suggestions: dict[int, Suggestion]) -> None:
    """Body photos that pass: near-duplicates dropped like the character's, the rest good with their pose."""
    kept: list[GateInput] = []
    for item in sorted(bodies, key=_keep_priority, reverse=True):
        twin = next(
            (
                other
                for other in kept
                if hash_distance(other.analysis.quality.phash, item.analysis.quality.phash) <= duplicate_bits
            ),
            None,
        )
        if twin is not None:
            reason = f"near-duplicate of asset {twin.asset_id} ({twin.name}); keeping {_why_kept(twin, item)}"
            suggestions[item.asset_id] = Suggestion(ReviewLabel.REJECT, reason, None)
            continue
        kept.append(item)
        assert item.analysis.body is not None
        pose = ", ".join(item.analysis.body.tags)
        reason = f"a face-less body photo for the body subset ({pose}){_transparency_note(item)}"
        suggestions[item.asset_id] = Suggestion(ReviewLabel.GOOD, reason, None)


def _identity_decision(item: GateInput, identity: IdentityReference, threshold: float) -> Suggestion | None:
    """A rejection for someone else or a crowded frame; None when the main face is the character alone."""
    faces = item.analysis.faces
    distances = [identity.distance(np.asarray(face.embedding), item.asset_id) for face in faces]
    main_distance = distances[0]
    if main_distance > threshold:
        if any(d <= threshold for d in distances[1:]):
            reason = (
                f"the main face is another person (distance {main_distance:.2f}); the character is only "
                "in the background — crop to the character and ingest the crop"
            )
        else:
            reason = f"another person (identity distance {main_distance:.2f} > {threshold:.2f})"
        return Suggestion(ReviewLabel.REJECT, reason, main_distance)
    crowd = [face for face in faces[1:] if face.area >= CROWD_AREA_SHARE * faces[0].area]
    if crowd:
        reason = (
            f"{len(crowd) + 1} people in frame (identity distance {main_distance:.2f}); "
            "crop to the character and ingest the crop"
        )
        return Suggestion(ReviewLabel.REJECT, reason, main_distance)
    return None


def _background_faces_note(item: GateInput) -> str:
    extra = len(item.analysis.faces) - 1
    return f"; {extra} small background face(s) ignored" if extra else ""


def _transparency_note(item: GateInput) -> str:
    if not item.transparent:
        return ""
    share = item.analysis.quality.background
    left_out = f" ({share:.0%} of the frame)" if share else ""
    return f"; transparent background{left_out} flattened onto white and left out of the exposure check"


def _keep_priority(item: GateInput) -> tuple[int, int, float, int]:
    """Which of two near-duplicates stays: the user's reference photo, then colour over a greyscale copy,
    then the sharper and larger one, then the older asset."""
    quality = item.analysis.quality
    return (
        int(item.is_reference),
        int(not is_greyscale(quality)),
        quality.sharpness * quality.width * quality.height,
        -item.asset_id,
    )


def _why_kept(kept: GateInput, dropped: GateInput) -> str:
    if kept.is_reference and not dropped.is_reference:
        return "the reference photo"
    if is_greyscale(dropped.analysis.quality) and not is_greyscale(kept.analysis.quality):
        return "the colour copy over this greyscale one"
    return "the sharper, larger copy"
