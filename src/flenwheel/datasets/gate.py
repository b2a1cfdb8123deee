"""The curation gates as a pure function: quality, face presence, identity, crowding and near-duplicates.

Each asset gets one suggested review label with a reason a user can act on. Nothing here touches the store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from flenwheel.domain import AssetAnalysis, ReviewLabel
from flenwheel.errors import ReferenceUnusable
from flenwheel.faces.identity import IdentityReference, Judgement, Verdict, find_identity, judge
from flenwheel.quality import QualityThresholds, hash_distance, is_greyscale, quality_problems

# A second face at least this share of the main face's area makes the image a multi-person shot.
CROWD_AREA_SHARE = 0.25
# A reference face narrower than this defines no identity: at 110 px photos (faces ~36 px) the dlib
# embedding drifts up to 0.39 from the full-size photo's (bench/calibrate_identity.py), most of the gap
# between one person and the next.
MIN_REFERENCE_FACE_PX = 48


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
    sha256: str = ""  # the stored image, for a content judge that looks at pixels


@dataclass(frozen=True)
class Suggestion:
    label: ReviewLabel
    reason: str
    identity_distance: float | None


@dataclass(frozen=True)
class GateResult:
    identity: IdentityReference | None  # None when no photo shows a usable face: nothing to compare
    threshold: float  # strict: at or below, the character
    suggestions: dict[int, Suggestion]
    review_threshold: float = (
        0.0  # loose: up to it, needs review (equal to `threshold` when there is no band)
    )
    warnings: tuple[str, ...] = ()  # what the user should know about the whole batch (disagreeing references)


# (kept, candidate, mirrored) → True when the two are the same photograph (mirrored: the candidate is the
# kept one's mirror image), False when their faces differ in content (expression, pose): variety.
SameContent = Callable[[GateInput, GateInput, bool], bool]


def run_gates(
    items: list[GateInput],
    threshold: float,
    duplicate_bits: int,
    thresholds: QualityThresholds,
    review_threshold: float | None = None,
    same_content: SameContent | None = None,
) -> GateResult:
    """Label every item. `threshold` (strict) and `review_threshold` (loose, default = strict: no band) are dlib
    embedding distances; `duplicate_bits` the perceptual-hash Hamming distance of near-duplicate candidates,
    which `same_content` (when given) confirms or calls variety.

    Raises ReferenceUnusable when a `--reference` photo cannot define the identity (no face, too small a face,
    several people), naming each such file and why."""
    loose = max(threshold, review_threshold if review_threshold is not None else threshold)
    _check_references(items)
    suggestions: dict[int, Suggestion] = {}
    usable: list[GateInput] = []
    bodies: list[GateInput] = []
    unfit_references: dict[int, list[str]] = {}  # reference → why it is not used for training
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
        if item.is_reference:
            usable.append(item)
            if problems:
                unfit_references[item.asset_id] = problems
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
        return GateResult(None, threshold, suggestions, loose)
    main_faces = {item.asset_id: np.asarray(item.analysis.faces[0].embedding) for item in usable}
    references = [item.asset_id for item in usable if item.is_reference]
    identity = find_identity(main_faces, references, threshold, loose)
    warnings = _disagreement_warnings(identity, usable, main_faces)

    # Faces that are clearly someone else: the other identities present, against which the band is weighed.
    distance_of = {
        item.asset_id: identity.distance(main_faces[item.asset_id], item.asset_id)
        for item in usable
        if not item.is_reference
    }
    others = [asset_id for asset_id, distance in distance_of.items() if distance > loose]
    other_faces = np.stack([main_faces[i] for i in others]) if others else np.empty((0, 128))

    survivors: list[tuple[GateInput, float, ReviewLabel, str]] = []  # item, distance, label, reason if kept
    for item in usable:
        if item.is_reference:
            label, why = _reference_reason(item, identity, unfit_references, main_faces)
            survivors.append((item, 0.0, label, why))
            continue
        embedding = main_faces[item.asset_id]
        nearest_other = _nearest(other_faces, embedding, exclude=item.asset_id in others)
        judgement = judge(
            distance_of[item.asset_id],
            nearest_other,
            identity.nearest_disagreeing(embedding, item.asset_id),
            threshold,
            loose,
        )
        suggestion = _identity_decision(item, identity, judgement, loose)
        if suggestion is None:
            note = _background_faces_note(item) + _transparency_note(item)
            if judgement.verdict == Verdict.CHARACTER:
                label, why = ReviewLabel.GOOD, f"the character ({judgement.why}){note}"
            else:
                label, why = (
                    ReviewLabel.NEEDS_REVIEW,
                    f"needs review: maybe the character ({judgement.why}){note}",
                )
            survivors.append((item, distance_of[item.asset_id], label, why))
        else:
            suggestions[item.asset_id] = suggestion

    # Near-duplicates: keep the reference, else the colour copy, else the sharpest, largest; the rest point at it.
    survivors.sort(key=lambda entry: _keep_priority(entry[0]), reverse=True)
    kept: list[GateInput] = []
    for item, distance, label, why in survivors:
        twin = _twin(item, kept, duplicate_bits, same_content) if label != ReviewLabel.REJECT else None
        shown = None if item.is_reference else distance
        if twin is not None:
            other, mirrored = twin
            what = "mirror image" if mirrored else "near-duplicate"
            reason = f"{what} of asset {other.asset_id} ({other.name}); keeping {_why_kept(other, item)}"
            if item.is_reference:
                reason = f"reference photo, defines the character; not for training: {reason}"
            suggestions[item.asset_id] = Suggestion(ReviewLabel.REJECT, reason, shown)
            continue
        suggestions[item.asset_id] = Suggestion(label, why, shown)
        if label != ReviewLabel.REJECT:
            kept.append(item)
    return GateResult(identity, threshold, suggestions, loose, tuple(warnings))


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


def _check_references(items: list[GateInput]) -> None:
    """Every reference must show one face big enough to define the identity; else name each and say why."""
    problems = []
    for item in items:
        if not item.is_reference or item.gate == "body":
            continue
        faces = item.analysis.faces
        quality = item.analysis.quality
        if not faces:
            problems.append(
                f"{item.name}: no face found in the {quality.width}x{quality.height} image (faces are found "
                f"from about {MIN_REFERENCE_FACE_PX} px across, frontal to three-quarter views)"
            )
            continue
        left, top, right, bottom = faces[0].box
        if min(right - left, bottom - top) < MIN_REFERENCE_FACE_PX:
            problems.append(
                f"{item.name}: the face is only {right - left}x{bottom - top} px, too small to define an "
                f"identity (at least {MIN_REFERENCE_FACE_PX} px across)"
            )
            continue
        crowd = [face for face in faces[1:] if face.area >= CROWD_AREA_SHARE * faces[0].area]
        if crowd:
            problems.append(
                f"{item.name}: {len(crowd) + 1} people of similar size in frame; which one is the character? "
                "Crop to the character"
            )
    if problems:
        raise ReferenceUnusable(problems)


def _reference_reason(
    item: GateInput,
    identity: IdentityReference,
    unfit: dict[int, list[str]],
    main_faces: dict[int, np.ndarray],
) -> tuple[ReviewLabel, str]:
    """A reference photo's label and reason: it always defines the character; whether it trains is separate."""
    if item.asset_id in identity.disagreeing:
        nearest = min(
            float(np.linalg.norm(main_faces[item.asset_id] - main_faces[other]))
            for other in identity.asset_ids
            if other != item.asset_id
        )
        return (
            ReviewLabel.NEEDS_REVIEW,
            f"reference photo that disagrees with the other references "
            f"(nearest at distance {nearest:.2f}): check it shows the character; it still counts, but photos "
            "that only look like it go to review",
        )
    if item.asset_id in unfit:
        return (
            ReviewLabel.REJECT,
            "reference photo, defines the character; not for training: " + "; ".join(unfit[item.asset_id]),
        )
    return ReviewLabel.GOOD, "reference photo, defines the character"


def _disagreement_warnings(
    identity: IdentityReference, usable: list[GateInput], main_faces: dict[int, np.ndarray]
) -> list[str]:
    if not identity.disagreeing:
        return []
    names = {item.asset_id: item.name for item in usable}
    flagged = ", ".join(f"{names[i]} (asset {i})" for i in identity.disagreeing)
    agreeing = len(identity.asset_ids) - len(identity.disagreeing)
    return [
        f"references disagree: {flagged} look like a different person from "
        + (f"the other {agreeing} reference(s)" if agreeing else "each other")
        + ". Check that every reference shows the character; photos that only look like a disagreeing "
        "reference need review."
    ]


def _nearest(faces: np.ndarray, embedding: np.ndarray, exclude: bool) -> float:
    if not len(faces):
        return float("inf")
    distances = np.linalg.norm(faces - embedding, axis=1)
    if exclude:
        distances = distances[distances > 0.0]  # the face itself
    return float(distances.min()) if distances.size else float("inf")


def _twin(
    item: GateInput, kept: list[GateInput], bits: int, same_content: SameContent | None
) -> tuple[GateInput, bool] | None:
    """The kept image this one is a copy of (and whether a mirrored one), or None."""
    quality = item.analysis.quality
    for other in kept:
        theirs = other.analysis.quality
        for mirrored in (False, True):
            mine = quality.phash if not mirrored else quality.phash_mirror
            if mine is None or hash_distance(theirs.phash, mine) > bits:
                continue
            if same_content is None or same_content(other, item, mirrored):
                return other, mirrored
    return None


def _identity_decision(
    item: GateInput, identity: IdentityReference, judgement: Judgement, loose: float
) -> Suggestion | None:
    """A rejection for someone else or a crowded frame; None when the main face may be the character alone."""
    faces = item.analysis.faces
    main_distance = identity.distance(np.asarray(faces[0].embedding), item.asset_id)
    if judgement.verdict == Verdict.OTHER:
        if any(identity.distance(np.asarray(face.embedding), item.asset_id) <= loose for face in faces[1:]):
            reason = (
                f"the main face is another person (distance {main_distance:.2f}); the character is only "
                "in the background — crop to the character and ingest the crop"
            )
        else:
            reason = f"another person ({judgement.why})"
        return Suggestion(ReviewLabel.REJECT, reason, _finite(main_distance))
    crowd = [face for face in faces[1:] if face.area >= CROWD_AREA_SHARE * faces[0].area]
    if crowd:
        reason = (
            f"{len(crowd) + 1} people in frame (identity distance {main_distance:.2f}); "
            "crop to the character and ingest the crop"
        )
        return Suggestion(ReviewLabel.REJECT, reason, main_distance)
    return None


def _finite(distance: float) -> float | None:
    return None if distance == float("inf") else distance


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
