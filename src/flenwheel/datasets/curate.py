"""Curate a character's assets: analyse what is new, run the gates, record suggested labels and captions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from flenwheel.captions import DEFAULT_TEMPLATE, render_caption
from flenwheel.datasets.analysis import analyze_files, with_pose
from flenwheel.datasets.gate import GateInput, SameContent, run_gates
from flenwheel.datasets.subsets import subset_of, tagged
from flenwheel.domain import CURATED_KINDS, AssetAnalysis, ReviewLabel, ReviewSource
from flenwheel.faces.content import same_photograph
from flenwheel.images import FLATTENED_TRANSPARENCY, open_stored
from flenwheel.quality import QualityThresholds, measure_quality, quality_grade
from flenwheel.store.models import Analysis, Asset, Character, IngestRejection, Review
from flenwheel.store.project import Project, get_character


@dataclass(frozen=True)
class AssetDecision:
    """One asset's current label (the user's if they set one, else the gate's) and the facts behind it."""

    asset_id: int
    file: str
    sha256: str
    label: ReviewLabel
    decided_by: ReviewSource
    reason: str
    identity_distance: float | None
    angle: str | None
    shot: str | None
    expression: str | None
    pose: (
        list[str] | None
    )  # body-pose tags ("full body", "standing", "T-pose", "facing front"); None: no person
    quality: str
    faces: int
    is_reference: bool
    caption: str | None


@dataclass(frozen=True)
class CurateReport:
    """What curate decided. `decisions` are in review order: needs_review first (the gate could not decide,
    a person should look), then by asset id. `threshold` is the strict identity threshold, `review_threshold`
    the loose one (dlib distance); `warnings` concern the whole batch (references that disagree)."""

    character: str
    identity_source: str
    threshold: float
    analysed_now: int
    decisions: list[AssetDecision]
    ingest_rejections: list[tuple[str, str, str]]  # path, reason code, detail
    review_threshold: float = 0.0
    warnings: tuple[str, ...] = ()

    def count(self, label: ReviewLabel) -> int:
        return sum(1 for decision in self.decisions if decision.label == label)


def curate(
    project: Project,
    character_name: str,
    thresholds: QualityThresholds | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    identity_threshold: float | None = None,
    review_threshold: float | None = None,
) -> CurateReport:
    """Analyse new assets (cached), then label every asset; `identity_threshold` (strict) and
    `review_threshold` (loose) override the settings.

    Raises ReferenceUnusable when a `--reference` photo shows no usable face (the message names each file)."""
    thresholds = thresholds or QualityThresholds()
    settings = project.settings
    with project.db.session() as session:
        character = get_character(session, character_name)
        character_id = character.id
        pending = session.execute(
            select(Asset.id, Asset.sha256)
            .outerjoin(Analysis, Analysis.asset_id == Asset.id)
            .where(
                Asset.character_id == character_id,
                Asset.kind.in_(CURATED_KINDS),
                Analysis.asset_id.is_(None),
            )
            .order_by(Asset.id)
        ).all()

    done = 0

    def store_analysis(asset_id: int, analysis: AssetAnalysis) -> None:
        nonlocal done
        try:
            with project.db.session() as session:  # one commit each: an interrupted curate keeps its work
                session.add(
                    Analysis(asset_id=asset_id, analyzer=analysis.analyzer, data=analysis.model_dump())
                )
        except IntegrityError:
            pass  # a curate running at the same time stored this asset's analysis first; it is the same
        done += 1
        if on_progress is not None:
            on_progress(done, len(pending))

    jobs = [(row.id, project.blobs.path(row.sha256)) for row in pending]
    analyze_files(jobs, settings.detect_max_side, settings.workers, store_analysis)

    with project.db.session() as session:
        character = session.get_one(Character, character_id)
        assets = _assets_with_analysis(session, character_id)
        analyses = {
            asset.id: AssetAnalysis.model_validate(asset.analysis.data) for asset in assets if asset.analysis
        }
        analyses.update(_refresh_quality(project, assets, analyses))
        analyses.update(_refresh_pose(project, assets, analyses))
        gate = run_gates(
            [
                GateInput(
                    a.id,
                    a.source_name,
                    analyses[a.id],
                    a.is_reference,
                    _was_transparent(a),
                    subset_of(a.attributes).gate,
                    a.sha256,
                )
                for a in assets
            ],
            identity_threshold or settings.identity_threshold,
            settings.near_duplicate_bits,
            thresholds,
            review_threshold or settings.identity_review_threshold,
            _content_judge(project),
        )
        decisions = []
        for asset in assets:
            suggestion = gate.suggestions[asset.id]
            _record_suggestion(
                session, asset, suggestion.label, suggestion.reason, suggestion.identity_distance
            )
            analysis = analyses[asset.id]
            if not asset.caption_edited:
                asset.caption = tagged(
                    render_caption(
                        character.caption_template or DEFAULT_TEMPLATE,
                        character.token,
                        character.class_word,
                        analysis.angle,
                        analysis.shot,
                        analysis.expression,
                    ),
                    subset_of(asset.attributes),
                )
            decisions.append(_decision(asset, analysis, suggestion.identity_distance, thresholds))
        decisions.sort(key=lambda d: (d.label != ReviewLabel.NEEDS_REVIEW, d.asset_id))
        rejections = [
            (r.path, r.reason, r.detail)
            for r in session.scalars(
                select(IngestRejection)
                .where(IngestRejection.character_id == character_id)
                .order_by(IngestRejection.id)
            )
        ]
    return CurateReport(
        character=character_name,
        identity_source=(
            f"{gate.identity.source} ({len(gate.identity.asset_ids)} images)"
            if gate.identity
            else "nobody: no photo shows a usable face"
        ),
        threshold=gate.threshold,
        analysed_now=len(pending),
        decisions=decisions,
        ingest_rejections=rejections,
        review_threshold=gate.review_threshold,
        warnings=gate.warnings,
    )


def _content_judge(project: Project) -> SameContent:
    """Same photograph or another of the sitting: the two stored images' faces compared (faces.content)."""

    def same(kept: GateInput, candidate: GateInput, mirrored: bool) -> bool:
        if not kept.analysis.faces or not candidate.analysis.faces:
            return True  # no face to tell them apart by: the frame hash decides
        return same_photograph(
            _stored_image(project, kept.sha256),
            kept.analysis.faces[0],
            _stored_image(project, candidate.sha256),
            candidate.analysis.faces[0],
            mirrored,
        )

    return same


def _stored_image(project: Project, sha256: str) -> Image.Image:
    return open_stored(project.blobs.get(sha256))


def _was_transparent(asset: Asset) -> bool:
    return any(note.startswith(FLATTENED_TRANSPARENCY) for note in asset.normalised or [])


def _refresh_quality(
    project: Project, assets: list[Asset], analyses: dict[int, AssetAnalysis]
) -> dict[int, AssetAnalysis]:
    """Re-measure quality in analyses cached before the background, chroma and mirror hash were measured (no
    face detection again), so an upgraded project stops judging exposure on its white backgrounds and finds
    mirrored copies."""
    refreshed = {}
    for asset in assets:
        analysis = analyses.get(asset.id)
        if analysis is None or asset.analysis is None:
            continue
        if analysis.quality.background is not None and analysis.quality.phash_mirror is not None:
            continue
        image = open_stored(project.blobs.get(asset.sha256))
        quality = measure_quality(image, [face.box for face in analysis.faces])
        analysis = analysis.model_copy(update={"quality": quality})
        asset.analysis.data = analysis.model_dump()
        refreshed[asset.id] = analysis
    return refreshed


def _refresh_pose(
    project: Project, assets: list[Asset], analyses: dict[int, AssetAnalysis]
) -> dict[int, AssetAnalysis]:
    """Measure the body pose in analyses cached before it was measured (faces are not looked for again)."""
    stale = [
        asset
        for asset in assets
        if asset.analysis is not None and asset.id in analyses and analyses[asset.id].pose_analyzer is None
    ]
    if not stale:
        return {}
    from flenwheel.poses.mediapipe_backend import shared_pose_analyzer

    pose_analyzer = shared_pose_analyzer()
    refreshed = {}
    for asset in stale:
        assert asset.analysis is not None
        analysis = with_pose(analyses[asset.id], open_stored(project.blobs.get(asset.sha256)), pose_analyzer)
        asset.analysis.data = analysis.model_dump()
        refreshed[asset.id] = analysis
    return refreshed


def _assets_with_analysis(session: Session, character_id: int) -> list[Asset]:
    return list(
        session.scalars(
            select(Asset)
            .where(Asset.character_id == character_id, Asset.kind.in_(CURATED_KINDS))
            .options(selectinload(Asset.analysis), selectinload(Asset.reviews))
            .order_by(Asset.id)
        )
    )


def _record_suggestion(
    session: Session, asset: Asset, label: ReviewLabel, reason: str, distance: float | None
) -> None:
    """Add a gate review only when it differs from the last one, so re-running curate adds no noise."""
    last = next((r for r in reversed(asset.reviews) if r.source == ReviewSource.GATE), None)
    if last is not None and last.label == label and last.reason == reason:
        return
    review = Review(
        asset_id=asset.id, label=label, reason=reason, source=ReviewSource.GATE, identity_distance=distance
    )
    session.add(review)
    asset.reviews.append(review)


def current_review(asset: Asset) -> Review | None:
    """The newest user label, else the newest label of the flywheel's auto policy, else the newest gate
    suggestion."""
    for source in (ReviewSource.USER, ReviewSource.POLICY, ReviewSource.GATE):
        for review in reversed(asset.reviews):
            if review.source == source:
                return review
    return None


def _decision(
    asset: Asset, analysis: AssetAnalysis, distance: float | None, thresholds: QualityThresholds
) -> AssetDecision:
    review = current_review(asset)
    assert review is not None
    return AssetDecision(
        asset_id=asset.id,
        file=asset.source_name,
        sha256=asset.sha256,
        label=ReviewLabel(review.label),
        decided_by=ReviewSource(review.source),
        reason=review.reason,
        identity_distance=None if distance is None else round(distance, 4),
        angle=analysis.angle,
        shot=analysis.shot,
        expression=analysis.expression,
        pose=analysis.body.tags if analysis.body else None,
        quality=quality_grade(analysis.quality, thresholds),
        faces=len(analysis.faces),
        is_reference=asset.is_reference,
        caption=asset.caption,
    )
