"""The identity gate: who the character is, and how far each face is from them.

The character's identity is the user's reference images when there are any, else the dominant identity
cluster among the project's faces. An asset's identity distance is the median embedding distance from
its main face to the reference faces (itself excluded), so one odd reference cannot let an intruder in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from flenwheel.errors import IdentityUnknown


@dataclass(frozen=True)
class IdentityReference:
    """The embeddings that define the character, and where they came from."""

    asset_ids: tuple[int, ...]
    embeddings: np.ndarray  # shape (n, 128)
    source: str  # "user references" or "dominant cluster"

    def distance(self, embedding: np.ndarray, exclude_asset_id: int | None = None) -> float:
        keep = [i for i, asset_id in enumerate(self.asset_ids) if asset_id != exclude_asset_id]
        if not keep:
            return 0.0  # the only reference is this asset itself
        distances = np.linalg.norm(self.embeddings[keep] - embedding, axis=1)
        return float(np.median(distances))


def find_identity(
    embeddings: Mapping[int, np.ndarray], reference_ids: list[int], threshold: float
) -> IdentityReference:
    """The user's references if any were marked, else the largest cluster of mutually close faces."""
    if reference_ids:
        usable = [asset_id for asset_id in reference_ids if asset_id in embeddings]
        if not usable:
            raise IdentityUnknown(
                "None of the reference images shows a detectable face: mark a clear, frontal photo "
                "with `flenwheel ingest NAME PHOTO --reference`."
            )
        return IdentityReference(tuple(usable), np.stack([embeddings[i] for i in usable]), "user references")
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
