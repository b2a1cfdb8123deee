"""Measure the identity gate's error rates on photos whose identities are known (one folder per person).

Two views: every pair of photos (what face_recognition's `compare_faces` does) and the gate's distance
(from a photo to the nearest other photo of a person, that photo itself excluded); and the Wilson interval
the rates are reported with. bench/calibrate_identity.py runs the whole gate on assembled batches.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

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
    """The gate's view (faces.identity): each person with ≥ 2 photos is a character whose other photos are the
    references; a photo's distance is to the nearest of them (that photo itself excluded)."""
    genuine: list[float] = []
    impostor: list[float] = []
    for person, references in people.items():
        if len(references) < 2:
            continue
        for i, photo in enumerate(references):
            others = [r for j, r in enumerate(references) if j != i]
            genuine.append(min(float(np.linalg.norm(photo - r)) for r in others))
        for other, photos in people.items():
            if other == person:
                continue
            for photo in photos:
                impostor.append(min(float(np.linalg.norm(photo - r)) for r in references))
    return Distances(genuine, impostor)


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95 % for the default z), as (low, high) in 0..1.

    Wilson, E. B. (1927), "Probable inference, the law of succession, and statistical inference", JASA 22,
    209–212; recommended over the normal (Wald) interval for small counts and rates near 0 or 1 by Brown,
    Cai & DasGupta (2001), Statistical Science 16(2), 101–133:
    centre = (p + z²/2n) / (1 + z²/n), half-width = z·sqrt(p(1−p)/n + z²/4n²) / (1 + z²/n), p = k/n.
    (0.0, 1.0) when there are no trials."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    z2 = z * z
    denominator = 1.0 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)
