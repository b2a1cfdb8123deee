"""Score one evaluation image: a face found, identity distance to the character, near-copy of a training image.

The character is defined as the identity gate defines it (faces/identity.py): the user's reference images
when any are marked, else the training images of the run's dataset version. A generated image is a near copy
when its perceptual hash is within `near_duplicate_bits` of a training image's — the LoRA memorised rather
than learned. Prompt adherence needs a vision-language model; none ships with flenwheel, so it stays None
("not measured").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from flenwheel.datasets.analysis import analyze_image, with_pose
from flenwheel.domain import AssetAnalysis, AssetKind, BodyPose, Frozen
from flenwheel.errors import IdentityUnknown
from flenwheel.evaluation.prompts import pose_target
from flenwheel.faces.base import FaceAnalyzer
from flenwheel.faces.identity import IdentityReference
from flenwheel.images import open_stored
from flenwheel.poses.base import PoseAnalyzer
from flenwheel.poses.mediapipe_backend import shared_pose_analyzer
from flenwheel.poses.target import PoseStatus
from flenwheel.quality import hash_distance
from flenwheel.safety import NSFW_THRESHOLD
from flenwheel.store.models import Analysis, Asset, DatasetItem
from flenwheel.store.project import Project

ADHERENCE_NOT_MEASURED = "not measured (no prompt-adherence model available)"


@dataclass(frozen=True)
class ReferenceSet:
    """Who the character is (embeddings) and what it was trained on (perceptual hashes)."""

    identity: IdentityReference
    training_hashes: tuple[tuple[int, str], ...]  # (asset id, 64-bit pHash hex)
    threshold: float  # identity distance at or below which a face is the character
    duplicate_bits: int  # pHash bits at or below which an image is a near copy

    @property
    def description(self) -> str:
        return f"{self.identity.source} ({len(self.identity.asset_ids)} faces)"


class ImageScore(Frozen):
    """What was measured on one generated image."""

    face_found: bool
    faces: int
    identity_distance: (
        float | None
    )  # dlib distance of the main face to the nearest reference (faces.identity)
    near_copy: bool
    near_copy_of: int | None  # the training asset it copies
    nsfw_score: float | None
    adherence: float | None = None  # None = not measured

    @property
    def nsfw(self) -> bool:
        return self.nsfw_score is not None and self.nsfw_score >= NSFW_THRESHOLD

    def identity_match(self, threshold: float) -> bool:
        return self.identity_distance is not None and self.identity_distance <= threshold


def score_image(
    image: Image.Image,
    analyzer: FaceAnalyzer,
    references: ReferenceSet,
    nsfw_score: float | None,
    pose_analyzer: PoseAnalyzer | None = None,
) -> tuple[ImageScore, AssetAnalysis]:
    """Measure one image (its body pose too with `pose_analyzer`); the analysis comes back too so the caller
    can cache it on the asset."""
    analysis = analyze_image(image, analyzer, pose_analyzer)
    distance = None
    if analysis.faces:
        distance = round(references.identity.distance(np.asarray(analysis.faces[0].embedding)), 4)
    copy_of = None
    closest = references.duplicate_bits + 1
    for asset_id, phash in references.training_hashes:
        bits = hash_distance(phash, analysis.quality.phash)
        if bits < closest:
            copy_of, closest = asset_id, bits
    score = ImageScore(
        face_found=bool(analysis.faces),
        faces=len(analysis.faces),
        identity_distance=distance,
        near_copy=copy_of is not None,
        near_copy_of=copy_of,
        nsfw_score=nsfw_score,
    )
    return score, analysis


def load_reference_set(
    project: Project, character_id: int, dataset_version_id: int, analyzer: FaceAnalyzer
) -> ReferenceSet:
    """The character's identity and training-image hashes; assets never analysed are analysed (and cached)."""
    with project.db.session() as session:
        training = list(
            session.scalars(
                select(DatasetItem.asset_id)
                .where(DatasetItem.dataset_version_id == dataset_version_id)
                .order_by(DatasetItem.position)
            )
        )
        references = list(
            session.scalars(
                select(Asset.id)
                .where(
                    Asset.character_id == character_id,
                    Asset.is_reference.is_(True),
                    Asset.kind != AssetKind.EVALUATION,
                )
                .order_by(Asset.id)
            )
        )
    analyses = cached_analyses(project, [*references, *training], analyzer)
    identity = None
    for source, ids in (("the user's reference images", references), ("the training images", training)):
        faces = {i: np.asarray(analyses[i].faces[0].embedding) for i in ids if analyses[i].faces}
        if faces:
            identity = IdentityReference(tuple(faces), np.stack(list(faces.values())), source)
            break
    if identity is None:
        raise IdentityUnknown(
            "Neither the reference images nor the training images show a detectable face, so likeness "
            "cannot be measured: mark a clear photo with `flenwheel ingest NAME PHOTO --reference`."
        )
    return ReferenceSet(
        identity=identity,
        training_hashes=tuple((i, analyses[i].quality.phash) for i in training),
        threshold=project.settings.identity_threshold,
        duplicate_bits=project.settings.near_duplicate_bits,
    )


def cached_analyses(
    project: Project, asset_ids: Iterable[int], analyzer: FaceAnalyzer
) -> dict[int, AssetAnalysis]:
    """Each asset's stored analysis; the missing ones are computed now and stored as curate would."""
    wanted = list(dict.fromkeys(asset_ids))
    with project.db.session() as session:
        rows = session.execute(
            select(Asset.id, Asset.sha256, Analysis.data)
            .outerjoin(Analysis, Analysis.asset_id == Asset.id)
            .where(Asset.id.in_(wanted))
        ).all()
    found: dict[int, AssetAnalysis] = {}
    for asset_id, sha256, data in rows:
        if data is not None:
            found[asset_id] = AssetAnalysis.model_validate(data)
            continue
        found[asset_id] = analyze_image(open_stored(project.blobs.get(sha256)), analyzer)
        store_analysis(project, asset_id, found[asset_id])
    return found


def pose_status(prompt_key: str, body: BodyPose | None) -> PoseStatus | None:
    """The pose check of a model-card image: None for a portrait prompt, else passed / drifted / not
    measurable (no person found)."""
    target = pose_target(prompt_key)
    return None if target is None else target.check(body).status


def body_poses(project: Project, session: Session, asset_ids: Iterable[int]) -> dict[int, BodyPose | None]:
    """The body pose of each asset from its cached analysis (None: nobody found, or never analysed); an
    analysis stored before pose was measured (by an older flenwheel) gets it now, in `session`."""
    found: dict[int, BodyPose | None] = {}
    for asset_id in dict.fromkeys(asset_ids):
        stored = session.get(Analysis, asset_id)
        if stored is None:
            found[asset_id] = None
            continue
        analysis = AssetAnalysis.model_validate(stored.data)
        if analysis.pose_analyzer is None:
            image = open_stored(project.blobs.get(session.get_one(Asset, asset_id).sha256))
            analysis = with_pose(analysis, image, shared_pose_analyzer())
            stored.data = analysis.model_dump()
        found[asset_id] = analysis.body
    return found


def store_analysis(project: Project, asset_id: int, analysis: AssetAnalysis) -> None:
    try:
        with project.db.session() as session:
            if session.get(Analysis, asset_id) is None:
                session.add(
                    Analysis(asset_id=asset_id, analyzer=analysis.analyzer, data=analysis.model_dump())
                )
    except IntegrityError:
        pass  # stored by a concurrent curate or evaluation: the same facts
