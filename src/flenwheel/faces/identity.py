"""The identity gate: who the character is, and how far each face is from them.

The character's identity is the user's reference images when there are any — every one of them counts —,
else the dominant identity cluster among the project's faces. A face's identity distance is the distance to
the nearest reference face that agrees with the others (itself excluded): references may show the
character across years, light and angles, and a photo only has to look like one of them. A reference whose
nearest other reference is farther than the loose threshold *disagrees*: it is flagged to the user, and a
photo that only looks like it goes to review, never straight into the dataset (so one odd reference can
neither reject good photos nor let an intruder in).

Open-set decision (`judge`): at most the strict threshold and nearer the character than any other person in
the batch → the character; between strict and loose → needs review; beyond loose, or in the band but nearer
another person present → another person. The thresholds are calibrated by `bench/calibrate_identity.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from flenwheel.errors import IdentityUnknown


@dataclass(frozen=True)
class IdentityReference:
    """The embeddings that define the character, and where they came from.

    `embeddings` has shape (n, 128), one row per id of `asset_ids`; `disagreeing` lists the references
    (asset ids) that are farther than the loose threshold from every other reference."""

    asset_ids: tuple[int, ...]
    embeddings: np.ndarray  # shape (n, 128)
    source: str  # "user references" or "dominant cluster"
    disagreeing: tuple[int, ...] = ()

    def _distances(self, embedding: np.ndarray, exclude_asset_id: int | None, agreeing: bool) -> np.ndarray:
        keep = [
            i
            for i, asset_id in enumerate(self.asset_ids)
            if asset_id != exclude_asset_id and (asset_id in self.disagreeing) != agreeing
        ]
        return np.linalg.norm(self.embeddings[keep] - embedding, axis=1) if keep else np.empty(0)

    def distance(self, embedding: np.ndarray, exclude_asset_id: int | None = None) -> float:
        """Distance (dlib units, 0–2) to the nearest agreeing reference; `inf` when there is none left (every
        reference disagrees, or the only one is this asset itself — then 0.0, it defines the identity)."""
        distances = self._distances(embedding, exclude_asset_id, agreeing=True)
        if distances.size:
            return float(distances.min())
        if exclude_asset_id in self.asset_ids and not self.disagreeing:
            return 0.0
        return float("inf")

    def nearest_disagreeing(self, embedding: np.ndarray, exclude_asset_id: int | None = None) -> float:
        """Distance to the nearest flagged (disagreeing) reference; `inf` when none is flagged."""
        distances = self._distances(embedding, exclude_asset_id, agreeing=False)
        return float(distances.min()) if distances.size else float("inf")


def references_identity(embeddings: Mapping[int, np.ndarray], loose: float) -> IdentityReference:
    """The user's references, every one of them; those farther than `loose` from all the others are flagged
    as disagreeing (with two references that disagree, both are: nobody can tell which one is right)."""
    ids = sorted(embeddings)
    matrix = np.stack([embeddings[i] for i in ids])
    disagreeing: tuple[int, ...] = ()
    if len(ids) > 1:
        distances = np.linalg.norm(matrix[:, None, :] - matrix[None, :, :], axis=2)
        np.fill_diagonal(distances, np.inf)
        disagreeing = tuple(
            asset_id for asset_id, row in zip(ids, distances, strict=True) if row.min() > loose
        )
    return IdentityReference(tuple(ids), matrix, "user references", disagreeing)


def find_identity(
    embeddings: Mapping[int, np.ndarray],
    reference_ids: list[int],
    threshold: float,
    loose: float | None = None,
) -> IdentityReference:
    """The user's references if any were marked (each must be in `embeddings`: the caller checks that every
    reference shows a usable face), else the largest cluster of faces closer than `threshold`."""
    if reference_ids:
        missing = [asset_id for asset_id in reference_ids if asset_id not in embeddings]
        if missing:
            raise IdentityUnknown(f"reference image(s) {missing} have no usable face")
        return references_identity({i: embeddings[i] for i in reference_ids}, loose or threshold)
    clusters = identity_clusters(embeddings, threshold)
    if not clusters or len(clusters[0]) < 2:
        raise IdentityUnknown(
            "Cannot tell who the character is: no two photos show the same person. Add more photos of "
            "the character, or mark one with `flenwheel ingest NAME PHOTO --reference`."
        )
    if len(clusters) > 1 and len(clusters[1]) == len(clusters[0]):
        raise IdentityUnknown(
            f"Two different people appear equally often ({len(clusters[0])} photos each): mark the "
            "character's photos with `flenwheel ingest NAME PHOTO --reference`."
        )
    members = clusters[0]
    return IdentityReference(tuple(members), np.stack([embeddings[i] for i in members]), "dominant cluster")


def identity_clusters(embeddings: Mapping[int, np.ndarray], threshold: float) -> list[list[int]]:
    """Connected components of the 'distance ≤ threshold' graph, largest first (ties: lowest id first)."""
    ids = sorted(embeddings)
    if not ids:
        return []
    matrix = np.stack([embeddings[i] for i in ids])
    distances = np.linalg.norm(matrix[:, None, :] - matrix[None, :, :], axis=2)
    parent = list(range(len(ids)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(distances <= threshold, k=1)), strict=True):
        parent[root(int(i))] = root(int(j))
    groups: dict[int, list[int]] = {}
    for index, asset_id in enumerate(ids):
        groups.setdefault(root(index), []).append(asset_id)
    return sorted(groups.values(), key=lambda group: (-len(group), group[0]))


class Verdict(StrEnum):
    CHARACTER = "character"
    REVIEW = "review"
    OTHER = "other"


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    why: str  # what decided it, in words a user can check


def judge(distance: float, nearest_other: float, flagged: float, strict: float, loose: float) -> Judgement:
    """The open-set decision for one face.

    `distance`: to the character's (agreeing) references; `nearest_other`: to the nearest face of another
    person present in the batch (`inf` when none); `flagged`: to the nearest disagreeing reference (`inf`
    when none). All in dlib embedding units; `strict` ≤ `loose`.
    """
    if distance <= strict:
        if nearest_other < distance:
            return Judgement(
                Verdict.REVIEW,
                f"distance {distance:.2f} ≤ {strict:.2f}, but another person in this batch is nearer "
                f"({nearest_other:.2f})",
            )
        return Judgement(Verdict.CHARACTER, f"distance {distance:.2f} ≤ {strict:.2f}")
    if distance <= loose:
        if nearest_other < distance:
            return Judgement(
                Verdict.OTHER,
                f"identity distance {distance:.2f} is in the review band ({strict:.2f}–{loose:.2f}) and another "
                f"person in this batch is nearer ({nearest_other:.2f})",
            )
        return Judgement(
            Verdict.REVIEW,
            f"distance {distance:.2f} is between {strict:.2f} (sure) and {loose:.2f} (possible)",
        )
    if flagged <= loose:
        return Judgement(
            Verdict.REVIEW,
            f"looks like only a reference that disagrees with the others (distance {flagged:.2f}; "
            f"{_shown(distance)} from the rest)",
        )
    return Judgement(Verdict.OTHER, f"identity distance {_shown(distance)} > {loose:.2f}")


def _shown(distance: float) -> str:
    return "∞" if distance == float("inf") else f"{distance:.2f}"
