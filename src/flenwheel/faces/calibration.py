"""Measure the identity gate's error rates on photos whose identities are known (one folder per person).

Two views: every pair of photos (what face_recognition's `compare_faces` does) and the gate as curate
applies it (median distance from a photo to the other photos of a person, that photo itself excluded).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from statistics import median

import numpy as np


@dataclass(frozen=True)
class ErrorRates:
    threshold: float
    false_accepts: int
    impostor_trials: int
    false_rejects: int
    genuine_trials: int

    @property
    def far(self) -> float:
        return self.false_accepts / self.impostor_trials if self.impostor_trials else 0.0

    @property
    def frr(self) -> float:
        return self.false_rejects / self.genuine_trials if self.genuine_trials else 0.0


@dataclass(frozen=True)
class Distances:
    genuine: list[float]
    impostor: list[float]

    def rates(self, threshold: float) -> ErrorRates:
        return ErrorRates(
            threshold,
            sum(1 for d in self.impostor if d <= threshold),
            len(self.impostor),
            sum(1 for d in self.genuine if d > threshold),
            len(self.genuine),
        )


def pair_distances(people: dict[str, list[np.ndarray]]) -> Distances:
    """Every pair of photos: same person → genuine, different people → impostor."""
    labelled = [(person, e) for person, embeddings in people.items() for e in embeddings]
    genuine: list[float] = []
    impostor: list[float] = []
    for (a, ea), (b, eb) in itertools.combinations(labelled, 2):
        (genuine if a == b else impostor).append(float(np.linalg.norm(ea - eb)))
    return Distances(genuine, impostor)


def gate_distances(people: dict[str, list[np.ndarray]]) -> Distances:
    """The gate's view: each person with ≥ 2 photos is a character whose other photos are the references."""
    genuine: list[float] = []
    impostor: list[float] = []
    for person, references in people.items():
        if len(references) < 2:
            continue
        for i, photo in enumerate(references):
            others = [r for j, r in enumerate(references) if j != i]
            genuine.append(median(float(np.linalg.norm(photo - r)) for r in others))
        for other, photos in people.items():
            if other == person:
                continue
            for photo in photos:
                impostor.append(median(float(np.linalg.norm(photo - r)) for r in references))
    return Distances(genuine, impostor)
