"""Same photograph or another one of the same sitting? The two faces compared pixel by pixel, aligned.

A perceptual hash of the whole frame cannot tell a resized copy from a photo taken a second later with a
smile (same backdrop, same framing), and misses a mirrored copy. Here each face is warped onto a small
canonical chip by its landmarks (eye centres and mouth centre), and the eye and mouth regions are compared by
normalised correlation (Pearson's r on grey pixels, so a brightness, colour or greyscale change does not
count): a copy correlates near 1 in both; a change of expression or gaze decorrelates the mouth or the eyes.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from flenwheel.domain import Face
from flenwheel.faces.geometry import MIRROR_68

CHIP = 64
# Where the eye centres and the mouth centre land on the chip (fractions of its side).
_CANONICAL = np.array([[0.3, 0.35], [0.7, 0.35], [0.5, 0.8]]) * CHIP
# Chip rows (fractions) and columns of the regions compared.
_REGIONS = {"eyes": (0.2, 0.5, 0.15, 0.85), "mouth": (0.62, 0.95, 0.2, 0.8)}
# At or above this correlation in every region two faces are the same photograph. Measured on ../shared/faces
# (a third of the identity photos, each copied seven ways): resized to 3/4, greyscale, recoloured, JPEG
# quality 30, rotated 10° and mirrored copies correlate ≥ 0.91 (median 0.98–0.99); of the London set's 40
# neutral/smiling pairs of one sitting, the most alike reaches 0.944 and those whose frame hashes are
# near-duplicates (≤ 6 bits) ≤ 0.861. Known miss: one of 30 copies darkened to 60 % fell to 0.49.
SAME_PHOTO_MIN_CORRELATION = 0.89


def face_chip(image: Image.Image, face: Face, mirrored: bool = False) -> np.ndarray:
    """The face as a (CHIP, CHIP) float grey array, eyes and mouth at fixed places; `mirrored` takes the
    chip of the image's mirror image (the landmarks mirrored with it)."""
    points = np.asarray(face.landmarks, dtype=np.float64)
    if mirrored:
        image = ImageOps.mirror(image)
        points = points[list(MIRROR_68)]
        points[:, 0] = image.width - 1 - points[:, 0]
    source = np.array([points[36:42].mean(axis=0), points[42:48].mean(axis=0), points[48:68].mean(axis=0)])
    # PIL's affine transform maps each output (chip) pixel to an input pixel: solve chip → image.
    matrix = np.linalg.solve(np.c_[_CANONICAL, np.ones(3)], source).T
    chip = image.convert("L").transform(
        (CHIP, CHIP), Image.Transform.AFFINE, tuple(matrix.ravel()), resample=Image.Resampling.BILINEAR
    )
    return np.asarray(chip, dtype=np.float64)


def region_correlations(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Pearson correlation of two chips in each compared region (1.0 identical up to brightness/contrast)."""
    found = {}
    for name, (top, bottom, left, right) in _REGIONS.items():
        rows = slice(int(top * CHIP), int(bottom * CHIP))
        columns = slice(int(left * CHIP), int(right * CHIP))
        first, second = a[rows, columns].ravel(), b[rows, columns].ravel()
        first, second = first - first.mean(), second - second.mean()
        scale = float(np.linalg.norm(first) * np.linalg.norm(second))
        found[name] = float(first @ second / scale) if scale > 0 else 0.0
    return found


def same_photograph(
    image_a: Image.Image, face_a: Face, image_b: Image.Image, face_b: Face, mirrored: bool = False
) -> bool:
    """True when face b (mirrored back when `mirrored`) is face a's photograph again: every region
    correlates at least SAME_PHOTO_MIN_CORRELATION."""
    correlations = region_correlations(face_chip(image_a, face_a), face_chip(image_b, face_b, mirrored))
    return min(correlations.values()) >= SAME_PHOTO_MIN_CORRELATION
