"""The flywheel's AI filter (seed 001 step 1.6) as a pure function: which synthetic candidates go to review.

A candidate is removed when it shows no face, fails the quality gates (quality.py), is another person (its
main face farther than the identity threshold from the character — the same distance as the identity gate
and evaluation use, faces/identity.py), shows several people, or is a near copy of a training image (pHash
within `duplicate_bits`, as evaluation/scoring.py judges memorisation). Each removal says why.

The survivors are ordered for review by usefulness: first the images measured to fill a gap of the model card
(evaluation/coverage.py: a missing or thin cell), then by identity margin (threshold − distance: the surer the
match, the earlier), then by sharpness.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import Field

from flenwheel.domain import AssetAnalysis, Frozen
from flenwheel.evaluation.coverage import CoverageCell, ImageTags, fills_gap
from flenwheel.evaluation.scoring import ReferenceSet
from flenwheel.quality import QualityThresholds, hash_distance, quality_problems

CROWD_AREA_SHARE = 0.25  # as datasets/gate.py: a second face this large makes it a multi-person image
RemovalKind = Literal["no face", "quality", "another person", "several people", "near copy"]


class Candidate(Frozen):
    asset_id: int
    analysis: AssetAnalysis


class FilterVerdict(Frozen):
    """One candidate's fate: kept (with its place in the review queue) or removed, and why."""

    asset_id: int
    kept: bool
    removed_for: tuple[RemovalKind, ...] = ()
    reason: str
    identity_distance: float | None = None
    margin: float | None = None  # threshold − distance; larger = surer match
    fills: str | None = None  # the model-card cell it is measured to fill, if a gap
    sharpness: float
    rank: int | None = None  # 1 = first in the review queue


class FilterReport(Frozen):
    candidates: int = Field(ge=0)
    kept: int = Field(ge=0)
    removed: int = Field(ge=0)
    removed_share: float  # seed 001's target: candidates reduced by 50–70 %
    removed_by: dict[str, int]  # per removal kind (an image can have several)
    verdicts: tuple[FilterVerdict, ...]  # review queue first (by rank), then the removed

    @property
    def queue(self) -> list[FilterVerdict]:
        return [verdict for verdict in self.verdicts if verdict.kept]


def filter_candidates(
    candidates: Sequence[Candidate],
    references: ReferenceSet,
    thresholds: QualityThresholds,
    gaps: Sequence[CoverageCell] = (),
) -> FilterReport:
    """Judge every candidate against the character (`references`) and the quality gates; order the survivors."""
    verdicts: list[FilterVerdict] = []
    for candidate in candidates:
        verdicts.append(_judge(candidate, references, thresholds, gaps))
    kept = sorted(
        (v for v in verdicts if v.kept),
        key=lambda v: (v.fills is None, -(v.margin or 0.0), -v.sharpness, v.asset_id),
    )
    ranked = [v.model_copy(update={"rank": index}) for index, v in enumerate(kept, start=1)]
    removed = [v for v in verdicts if not v.kept]
    counts = Counter(kind for v in removed for kind in v.removed_for)
    total = len(verdicts)
    return FilterReport(
        candidates=total,
        kept=len(ranked),
        removed=len(removed),
        removed_share=round(len(removed) / total, 4) if total else 0.0,
        removed_by=dict(sorted(counts.items())),
        verdicts=(*ranked, *removed),
    )


def _judge(
    candidate: Candidate,
    references: ReferenceSet,
    thresholds: QualityThresholds,
    gaps: Sequence[CoverageCell],
) -> FilterVerdict:
    analysis = candidate.analysis
    kinds: list[RemovalKind] = []
    reasons: list[str] = []
    if not analysis.faces:
        kinds.append("no face")
        reasons.append("no face found")
    problems = quality_problems(analysis.quality, thresholds)
    if problems:
        kinds.append("quality")
        reasons.extend(problems)
    distance = margin = None
    if analysis.faces:
        distance = round(references.identity.distance(np.asarray(analysis.faces[0].embedding)), 4)
        margin = round(references.threshold - distance, 4)
        if distance > references.threshold:
            kinds.append("another person")
            reasons.append(f"another person (identity distance {distance:.2f} > {references.threshold:.2f})")
        crowd = [f for f in analysis.faces[1:] if f.area >= CROWD_AREA_SHARE * analysis.faces[0].area]
        if crowd:
            kinds.append("several people")
            reasons.append(f"{len(crowd) + 1} people in frame")
    for asset_id, phash in references.training_hashes:
        bits = hash_distance(phash, analysis.quality.phash)
        if bits <= references.duplicate_bits:
            kinds.append("near copy")
            reasons.append(f"near copy of training image {asset_id} ({bits} pHash bits)")
            break
    tags = ImageTags.of(analysis)
    fills = fills_gap(tags, gaps) if not kinds else None
    if kinds:
        reason = "; ".join(reasons)
    else:
        assert distance is not None and margin is not None
        gap = f"; fills the gap {fills}" if fills else ""
        reason = f"the character (distance {distance:.2f}, margin {margin:.2f}){gap}"
    return FilterVerdict(
        asset_id=candidate.asset_id,
        kept=not kinds,
        removed_for=tuple(kinds),
        reason=reason,
        identity_distance=distance,
        margin=margin,
        fills=fills,
        sharpness=round(analysis.quality.sharpness, 2),
    )


def false_negative_rate(report: FilterReport, genuine: set[int]) -> float | None:
    """Share of the genuine candidates (the character, known by the caller) that the filter removed;
    None when there were none."""
    judged = [v for v in report.verdicts if v.asset_id in genuine]
    if not judged:
        return None
    return round(sum(not v.kept for v in judged) / len(judged), 4)
