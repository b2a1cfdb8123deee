"""The studio's likeness check: each image it draws is compared with the character's face and the verdict is
kept on the asset, so the identity pass rate per mode (seed 000 step 6: ~80 % in identity-reference mode,
> 95 % with the LoRA) is measured, not assumed. The distance is the dlib distance to the nearest reference
face, as the identity gate measures it (faces/identity.py); the threshold is FLENWHEEL_IDENTITY_THRESHOLD."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy import select

from flenwheel.faces.identity import IdentityReference
from flenwheel.pipeline.stage import NOT_MEASURABLE, FaceProbe, IdentityCheck, picked_base, update_attributes
from flenwheel.store.models import Asset, DatasetItem, DatasetVersion
from flenwheel.store.project import Project, get_character

MAX_REFERENCE_FACES = 8


def reference_faces(project: Project, character_name: str, probe: FaceProbe) -> tuple[np.ndarray, str] | None:
    """Who the studio's images should show, as face embeddings (n, 128), and where they came from: the
    picked base image (the face the wizard settled on), else the user's reference photos, else the images of
    the newest dataset version; None when none of them shows a face."""
    base = picked_base(project, character_name)
    with project.db.session() as session:
        character = get_character(session, character_name)
        references = list(
            session.scalars(
                select(Asset.id)
                .where(Asset.character_id == character.id, Asset.is_reference.is_(True))
                .order_by(Asset.id)
            )
        )
        newest = session.scalar(
            select(DatasetVersion.id)
            .where(DatasetVersion.character_id == character.id)
            .order_by(DatasetVersion.number.desc())
            .limit(1)
        )
        training = (
            list(
                session.scalars(
                    select(DatasetItem.asset_id)
                    .where(DatasetItem.dataset_version_id == newest)
                    .order_by(DatasetItem.position)
                )
            )
            if newest is not None
            else []
        )
    for source, ids in (
        ("the picked base image", [base.id] if base is not None else []),
        ("the reference photos", references),
        ("the newest dataset version", training),
    ):
        faces = [face for i in ids[:MAX_REFERENCE_FACES] if (face := probe.embedding(i)) is not None]
        if faces:
            return np.stack(faces), source
    return None


def check_identity(
    project: Project, character_name: str, asset_ids: Sequence[int]
) -> tuple[IdentityCheck, ...]:
    """Compare each studio image's face with the character's (`reference_faces`; the distance to the nearest,
    as the identity gate measures it) and record the verdict on the asset (`attributes.identity`, `identity_distance`),
    so the studio's identity pass rate per mode can be counted (flenwheel.metrics). `not measurable` — no face
    in the image (the tiny model draws none) or none to compare with — is recorded as such, never as a pass."""
    probe = FaceProbe(project)
    threshold = project.settings.identity_threshold
    reference = reference_faces(project, character_name, probe)
    checks = []
    for asset_id in asset_ids:
        face = probe.embedding(asset_id)
        if reference is None or face is None:
            which = "the image" if face is None else "the character's reference images"
            check = IdentityCheck(
                status=NOT_MEASURABLE,
                threshold=threshold,
                reason=f"{NOT_MEASURABLE}: no face found in {which}",
            )
        else:
            faces, source = reference
            identity = IdentityReference(tuple(range(len(faces))), faces, source)
            distance = round(identity.distance(face), 4)
            passed = distance <= threshold
            check = IdentityCheck(
                status="passed" if passed else "drifted",
                distance=distance,
                threshold=threshold,
                reason=f"{'same person' if passed else 'face drifted'}: distance {distance} to {source} "
                f"({'≤' if passed else '>'} {threshold})",
            )
        update_attributes(project, asset_id, identity=check.status, identity_distance=check.distance)
        checks.append(check)
    return tuple(checks)
