"""Dataset versions: immutable snapshots (v1, v2, …) of the good images with a composition report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import selectinload

from flenwheel.captions import check_caption
from flenwheel.datasets.curate import current_review
from flenwheel.datasets.subsets import Subset, subset_of
from flenwheel.domain import DATASET_KINDS, TRAINING_LABELS, AssetAnalysis, AssetKind, ReviewLabel, Shot
from flenwheel.errors import DatasetEmpty, FlenwheelError, InvalidInput
from flenwheel.quality import QualityThresholds, quality_grade
from flenwheel.store.models import Asset, Character, DatasetItem, DatasetVersion
from flenwheel.store.project import Project, get_character

# Seed 000 step 3 / seed 001 step 1.1 targets, with the tolerance within which a share counts as met.
SHOT_TARGETS = {Shot.UPPER_BODY: 0.70, Shot.CLOSE_UP: 0.20, Shot.FULL_BODY: 0.10}
SHARE_TOLERANCE = 0.15  # at most; a small target gets half its own size (10 % full body: 5–15 %)
MIN_IMAGES = 10
MIN_ANGLES = 2


@dataclass(frozen=True)
class BuildResult:
    version: DatasetVersion
    created: bool  # False when the good set is unchanged since the latest version


BUILD_ATTEMPTS = 3


def build_dataset_version(
    project: Project, character_name: str, lineage: dict[str, Any] | None = None
) -> BuildResult:
    """Snapshot the images currently labelled good (and the pristine ones of the flywheel, seed 001 step 1.8);
    an unchanged set returns the latest version. A synthetic image enters only when labelled pristine.
    `lineage` (e.g. the flywheel round and the candidates it added, with why) is kept in the version's
    composition beside the added/removed counts.

    Concurrent builds of one character (ten clicks, two workers) are serialised on the character's row
    (PostgreSQL) and retried should two still pick the same number (SQLite), so each answers with a version:
    the same one when the good set is the same."""
    for attempt in range(1, BUILD_ATTEMPTS + 1):
        try:
            return _build(project, character_name, lineage or {})
        except (IntegrityError, OperationalError):
            if attempt == BUILD_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def _build(project: Project, character_name: str, lineage: dict[str, Any]) -> BuildResult:
    with project.db.session() as session:
        character = get_character(session, character_name)
        # One build of a character at a time: the next waits here, then sees the version this one made.
        session.execute(select(Character.id).where(Character.id == character.id).with_for_update())
        assets = session.scalars(
            select(Asset)
            .where(Asset.character_id == character.id, Asset.kind.in_(DATASET_KINDS))
            .options(selectinload(Asset.reviews), selectinload(Asset.analysis))
            .order_by(Asset.id)
        ).all()
        good = [a for a in assets if enters_dataset(a)]
        if not good:
            raise DatasetEmpty(
                f"No images of {character_name!r} are labelled good: run `flenwheel curate {character_name}` "
                f"or label some with `flenwheel review {character_name} ASSET --label good`."
            )
        items = []
        poses: dict[int, list[str] | None] = {}
        for position, asset in enumerate(good):
            if asset.analysis is None:
                raise FlenwheelError(
                    f"asset {asset.id} is labelled good but was never analysed: run `flenwheel curate {character_name}`"
                )
            analysis = AssetAnalysis.model_validate(asset.analysis.data)
            if analysis.pose_analyzer is not None:
                poses[asset.id] = analysis.body.tags if analysis.body else None
            try:
                caption = check_caption(asset.caption or "", character.token)
            except InvalidInput as exc:
                raise InvalidInput(f"asset {asset.id} ({asset.source_name}): {exc}") from None
            items.append(
                DatasetItem(
                    asset_id=asset.id,
                    position=position,
                    sha256=asset.sha256,
                    caption=caption,
                    angle=analysis.angle,
                    shot=analysis.shot,
                    expression=analysis.expression,
                    quality=quality_grade(analysis.quality, QualityThresholds()),
                )
            )
        latest = session.scalars(
            select(DatasetVersion)
            .where(DatasetVersion.character_id == character.id)
            .options(selectinload(DatasetVersion.items))
            .order_by(DatasetVersion.number.desc())
            .limit(1)
        ).first()
        if latest is not None and _fingerprint(latest.items) == _fingerprint(items):
            return BuildResult(latest, created=False)
        # From the version this build compared with, not a second query: SQLite runs each SELECT on its own
        # (pysqlite opens no transaction for reads), so a max() read later could see a version committed in
        # between and number a duplicate "v2". A version committed since `latest` was read now collides on
        # uq_dataset_number, and the retry compares with it.
        number = (latest.number if latest is not None else 0) + 1
        composition = composition_report(items, latest.items if latest else None, poses)
        if any("subset" in (asset.attributes or {}) for asset in good):
            composition["subsets"] = subsets_report([subset_of(asset.attributes) for asset in good])
        version = DatasetVersion(
            character_id=character.id,
            number=number,
            parent_id=latest.id if latest else None,
            composition=composition,
        )
        if lineage:
            version.composition = {
                **version.composition,
                "lineage": {**version.composition["lineage"], **lineage},
            }
        version.items = items
        session.add(version)
        session.flush()
        return BuildResult(version, created=True)


def enters_dataset(asset: Asset) -> bool:
    """Whether an asset's current label puts it into the next version: good or pristine; a synthetic image
    only as pristine (step 1.7's strict bar — the gate's "good" suggestion is not enough)."""
    review = current_review(asset)
    if review is None:
        return False
    if asset.kind == AssetKind.SYNTHETIC:
        return review.label == ReviewLabel.PRISTINE
    return review.label in TRAINING_LABELS


def _fingerprint(items: list[DatasetItem]) -> list[tuple[str, str]]:
    return sorted((item.sha256, item.caption) for item in items)


def subsets_report(per_item: list[Subset]) -> dict[str, Any]:
    """The subsets of a version, in the order first seen: each one's settings, item positions and share of
    images and of steps (images × repeats) — seed 002's 70:30 images, 2800:600 ≈ 4.7:1 steps."""
    groups: dict[str, dict[str, Any]] = {}
    for position, subset in enumerate(per_item):
        group = groups.setdefault(subset.name, {**subset.model_dump(), "positions": []})
        group["positions"].append(position)
    images = sum(len(group["positions"]) for group in groups.values()) or 1
    steps = sum(len(group["positions"]) * group["repeats"] for group in groups.values()) or 1
    for group in groups.values():
        group["images"] = len(group["positions"])
        group["steps_per_epoch"] = group["images"] * group["repeats"]
        group["image_share"] = round(group["images"] / images, 4)
        group["step_share"] = round(group["steps_per_epoch"] / steps, 4)
    fewest_steps = min(group["steps_per_epoch"] for group in groups.values())
    return {
        "subsets": list(groups.values()),
        "images_ratio": ":".join(f"{round(100 * g['images'] / images)}" for g in groups.values()),
        "steps_ratio": ":".join(f"{g['steps_per_epoch'] / fewest_steps:.1f}" for g in groups.values()),
    }


def version_subsets(version: DatasetVersion) -> list[tuple[Subset, list[int]]]:
    """(subset, item positions) of a version built with subsets; [] for a one-folder version."""
    report = (version.composition or {}).get("subsets") or {}
    fields = ("name", "repeats", "caption_tag", "gate")
    return [
        (Subset.model_validate({key: group[key] for key in fields}), list(group["positions"]))
        for group in report.get("subsets", [])
    ]


def composition_report(
    items: list[DatasetItem],
    parent_items: list[DatasetItem] | None,
    poses: dict[int, list[str] | None] | None = None,
) -> dict[str, Any]:
    """Counts by shot/angle/expression and each seed target marked met or not; with `poses` (asset id → body-
    pose tags, None where no person was found; assets whose pose was never measured left out) also the count
    of each body-pose tag, and of images whose pose was measured."""
    total = len(items)
    shots = {shot.value: sum(1 for i in items if i.shot == shot) for shot in Shot}
    angles = sorted({i.angle for i in items if i.angle})
    expressions = sorted({i.expression for i in items if i.expression})
    targets: list[dict[str, Any]] = [
        {"target": f"at least {MIN_IMAGES} images", "actual": str(total), "met": total >= MIN_IMAGES},
    ]
    for shot, share in SHOT_TARGETS.items():
        actual = shots[shot.value] / total if total else 0.0
        targets.append(
            {
                "target": f"about {share:.0%} {shot.value}",
                "actual": f"{actual:.0%} ({shots[shot.value]})",
                "met": abs(actual - share) <= min(SHARE_TOLERANCE, share / 2),
            }
        )
    targets.append(
        {
            "target": f"at least {MIN_ANGLES} angles",
            "actual": ", ".join(angles) or "none",
            "met": len(angles) >= MIN_ANGLES,
        }
    )
    captioned = sum(1 for i in items if i.caption)
    targets.append(
        {"target": "all images captioned", "actual": f"{captioned}/{total}", "met": captioned == total}
    )
    lineage: dict[str, Any] = {}
    if parent_items is not None:
        before = {i.sha256 for i in parent_items}
        after = {i.sha256 for i in items}
        lineage = {"added": len(after - before), "removed": len(before - after)}
    return {
        "images": total,
        "shots": shots,
        "angles": {a: sum(1 for i in items if i.angle == a) for a in angles},
        "expressions": {e: sum(1 for i in items if i.expression == e) for e in expressions},
        "poses": _pose_counts(items, poses or {}),
        "targets": targets,
        "lineage": lineage,
    }


def _pose_counts(items: list[DatasetItem], poses: dict[int, list[str] | None]) -> dict[str, int]:
    """{"measured": n, "no person": n, "full body": n, "standing": n, ...} over the measured items."""
    measured = [poses[i.asset_id] for i in items if i.asset_id in poses]
    counts: dict[str, int] = {"measured": len(measured), "no person": sum(1 for t in measured if t is None)}
    for tags in measured:
        for tag in tags or ():
            counts[tag] = counts.get(tag, 0) + 1
    return counts


def get_dataset_version(project: Project, character_name: str, number: int | None = None) -> DatasetVersion:
    """A version by number, or the latest one."""
    with project.db.session() as session:
        character = get_character(session, character_name)
        query = (
            select(DatasetVersion)
            .where(DatasetVersion.character_id == character.id)
            .options(selectinload(DatasetVersion.items))
        )
        if number is not None:
            query = query.where(DatasetVersion.number == number)
        version = session.scalars(query.order_by(DatasetVersion.number.desc()).limit(1)).first()
        if version is None:
            which = f"version v{number}" if number is not None else "dataset version"
            raise DatasetEmpty(
                f"{character_name!r} has no {which}: build one with `flenwheel dataset build {character_name}`."
            )
        return version
