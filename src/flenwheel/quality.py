"""Image quality metrics (sharpness, exposure, resolution) and perceptual hashes for near-duplicates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from flenwheel.domain import QualityMetrics

_ANALYSIS_SIDE = 512
Box = tuple[int, int, int, int]  # left, top, right, bottom in pixels


@dataclass(frozen=True)
class QualityThresholds:
    """Below these an image is rejected (seed 001 step 1.1: 'remove blurry, poorly lit')."""

    min_side: int = 256
    min_sharpness: float = 20.0
    min_brightness: float = 0.12
    max_brightness: float = 0.92
    max_clipped: float = 0.35


def measure_quality(image: Image.Image, faces: Sequence[Box] = ()) -> QualityMetrics:
    """Sharpness on the whole frame; exposure on the visible subject.

    A uniform background that touches the border (a studio backdrop, or the white flenwheel fills a
    transparent cutout's background with) is left out of brightness and clipping: it is not the subject,
    and counting it would call every portrait on white "overexposed". `faces` (left, top, right, bottom boxes
    in `image` pixels) are never background, so a blown-out face on white is still judged overexposed.
    """
    rgb = image.convert("RGB")
    scale = _ANALYSIS_SIDE / max(rgb.size)
    if scale < 1:
        rgb = rgb.resize((round(rgb.width * scale), round(rgb.height * scale)), Image.Resampling.BILINEAR)
    colour = np.asarray(rgb, dtype=np.int16)
    pixels = np.asarray(rgb.convert("L"), dtype=np.float32)
    keep = np.zeros(pixels.shape, dtype=bool)
    for left, top, right, bottom in faces:
        factor = min(scale, 1.0)
        keep[
            max(0, int(top * factor)) : max(0, int(np.ceil(bottom * factor))),
            max(0, int(left * factor)) : max(0, int(np.ceil(right * factor))),
        ] = True
    background = uniform_background(colour, keep)
    subject = pixels[~background] if background.any() else pixels.ravel()
    return QualityMetrics(
        width=image.width,
        height=image.height,
        sharpness=_laplacian_variance(pixels),
        brightness=float(subject.mean() / 255.0),
        clipped_dark=float((subject <= 5).mean()),
        clipped_bright=float((subject >= 250).mean()),
        phash=perceptual_hash(image),
        phash_mirror=perceptual_hash(ImageOps.mirror(image)),
        background=round(float(background.mean()), 4),
        chroma=round(float(_channel_spread(colour).mean() / 255.0), 4),
    )


# A background pixel differs from the border's colour by at most this much in every channel (0–255):
# wide enough for JPEG noise and the anti-aliased rim of a cutout, narrow enough to stop at skin and hair.
BACKGROUND_TOLERANCE = 12
# The border is a background only when at least this share of it has that one colour.
MIN_BORDER_SHARE = 0.5
# Outside this range of the frame the "background" is not one: a few stray pixels, or a washed-out photo
# whose every pixel is near-white (then the whole frame is judged, and it is rejected as it should be).
BACKGROUND_SHARE = (0.02, 0.85)
# Mean (max − min channel) / 255 below which an image is greyscale: a grey JPEG keeps < 0.005 of chroma
# noise, a colour portrait on the test photos has 0.08–0.25.
GREY_CHROMA = 0.02


def is_greyscale(metrics: QualityMetrics) -> bool:
    """True for a black-and-white copy; unknown (analyses made before chroma was measured) counts as colour."""
    return metrics.chroma is not None and metrics.chroma < GREY_CHROMA


def uniform_background(colour: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """The pixels of a one-colour background connected to the image border, as a boolean (H, W) mask.

    `colour` is an (H, W, 3) integer RGB array. The border's median colour is the candidate; every pixel within
    `BACKGROUND_TOLERANCE` of it that a path of such pixels links to the border is background. An empty mask
    when the border has no dominant colour or the region is not a plausible background (`BACKGROUND_SHARE`).
    `keep` (an (H, W) boolean mask, e.g. the face boxes) is never background, and the region does not grow
    through it.
    """
    height, width = colour.shape[:2]
    empty = np.zeros((height, width), dtype=bool)
    if height < 3 or width < 3:
        return empty
    border = np.concatenate([colour[0], colour[-1], colour[1:-1, 0], colour[1:-1, -1]])
    close = near_colour(colour, np.median(border, axis=0), BACKGROUND_TOLERANCE)
    if keep is not None:
        close &= ~keep
    edge = np.zeros((height, width), dtype=bool)
    edge[0], edge[-1], edge[:, 0], edge[:, -1] = True, True, True, True
    if close[edge].mean() < MIN_BORDER_SHARE:
        return empty
    background = _connected(close, close & edge)
    low, high = BACKGROUND_SHARE
    return background if low <= background.mean() <= high else empty


def near_colour(colour: np.ndarray, reference: np.ndarray, tolerance: int) -> np.ndarray:
    """(H, W) mask of the pixels of the (H, W, 3) integer image `colour` within `tolerance` of the (3,)
    `reference` in every channel: |pixel − reference| ≤ tolerance, computed as integer bounds per channel —
    the same pixels as comparing float differences, without (H, W, 3) float temporaries (3× faster)."""
    low = np.ceil(reference - tolerance).astype(colour.dtype)
    high = np.floor(reference + tolerance).astype(colour.dtype)
    close = (colour[..., 0] >= low[0]) & (colour[..., 0] <= high[0])
    for channel in (1, 2):
        close &= (colour[..., channel] >= low[channel]) & (colour[..., channel] <= high[channel])
    return np.asarray(close)


def _connected(allowed: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The `allowed` pixels 4-connected to a seed: whole row runs, then whole column runs, until stable."""
    filled = seeds & allowed
    while True:
        grown = _fill_runs(allowed, filled)
        grown = _fill_runs(allowed.T, grown.T).T
        if np.array_equal(grown, filled):
            return filled
        filled = grown


def _fill_runs(allowed: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """Every horizontal run of `allowed` pixels that holds a `filled` pixel, filled whole."""
    height, width = allowed.shape
    flat = allowed.ravel()
    starts = flat.copy()
    starts[1:] &= ~flat[:-1]
    starts[::width] = flat[::width]  # a run never continues from the end of the row above
    run = np.cumsum(starts) * flat  # run number per pixel, 0 outside every run
    hit = np.bincount(run, weights=(filled.ravel() & flat), minlength=int(run.max()) + 1) > 0
    hit[0] = False
    return np.asarray(hit[run].reshape(height, width))


def quality_problems(metrics: QualityMetrics, thresholds: QualityThresholds) -> list[str]:
    """Human-readable reasons the image fails the gates; empty when it passes."""
    problems = []
    if min(metrics.width, metrics.height) < thresholds.min_side:
        problems.append(
            f"low resolution {metrics.width}x{metrics.height} (short side < {thresholds.min_side} px)"
        )
    if metrics.sharpness < thresholds.min_sharpness:
        problems.append(f"blurry (sharpness {metrics.sharpness:.0f} < {thresholds.min_sharpness:.0f})")
    if metrics.brightness < thresholds.min_brightness or metrics.clipped_dark > thresholds.max_clipped:
        problems.append(f"underexposed (mean brightness {metrics.brightness:.2f}{_judged_on(metrics)})")
    if metrics.brightness > thresholds.max_brightness or metrics.clipped_bright > thresholds.max_clipped:
        problems.append(f"overexposed (mean brightness {metrics.brightness:.2f}{_judged_on(metrics)})")
    return problems


def _judged_on(metrics: QualityMetrics) -> str:
    return (
        f" of the subject, a {metrics.background:.0%} plain background left out" if metrics.background else ""
    )


def quality_grade(metrics: QualityMetrics, thresholds: QualityThresholds) -> str:
    """'high', 'medium' or 'low', as seed 001's metadata.json records it."""
    if quality_problems(metrics, thresholds):
        return "low"
    sharp = metrics.sharpness >= 3 * thresholds.min_sharpness
    large = min(metrics.width, metrics.height) >= 512
    return "high" if sharp and large else "medium"


def _channel_spread(colour: np.ndarray) -> np.ndarray:
    """max − min over the three channels of an (H, W, 3) integer image, per pixel (elementwise: a reduction
    over an axis of 3 is several times slower in numpy)."""
    red, green, blue = colour[..., 0], colour[..., 1], colour[..., 2]
    return np.maximum(np.maximum(red, green), blue) - np.minimum(np.minimum(red, green), blue)


def _laplacian_variance(pixels: np.ndarray) -> float:
    lap = (
        pixels[:-2, 1:-1] + pixels[2:, 1:-1] + pixels[1:-1, :-2] + pixels[1:-1, 2:] - 4.0 * pixels[1:-1, 1:-1]
    )
    return float(lap.var())


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    matrix = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    matrix[0] /= np.sqrt(2.0)
    return matrix


_DCT32 = _dct_matrix(32)


def perceptual_hash(image: Image.Image) -> str:
    """pHash: the signs of the 8x8 lowest DCT frequencies of a 32x32 grey copy, against their median.

    Kept rather than imagehash.phash: on tests/fixtures/faces both make the same near-duplicate decisions at
    the default 6 bits (all 4371 pairs), but imagehash's hash differs in 5 of 94 images (it takes the median
    over the DC term too, on an unnormalised DCT), which changes decisions at 8 bits and above and would not
    match the hashes projects have already stored."""
    small = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = (_DCT32 @ small @ _DCT32.T)[:8, :8].flatten()
    bits = low > np.median(low[1:])
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def hash_distance(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()
