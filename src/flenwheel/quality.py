"""Image quality metrics (sharpness, exposure, resolution) and perceptual hashes for near-duplicates."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from flenwheel.domain import QualityMetrics

_ANALYSIS_SIDE = 512


@dataclass(frozen=True)
class QualityThresholds:
    """Below these an image is rejected (seed 001 step 1.1: 'remove blurry, poorly lit')."""

    min_side: int = 256
    min_sharpness: float = 20.0
    min_brightness: float = 0.12
    max_brightness: float = 0.92
    max_clipped: float = 0.35


def measure_quality(image: Image.Image) -> QualityMetrics:
    grey = image.convert("L")
    scale = _ANALYSIS_SIDE / max(grey.size)
    if scale < 1:
        grey = grey.resize((round(grey.width * scale), round(grey.height * scale)), Image.Resampling.BILINEAR)
    pixels = np.asarray(grey, dtype=np.float32)
    return QualityMetrics(
        width=image.width,
        height=image.height,
        sharpness=_laplacian_variance(pixels),
        brightness=float(pixels.mean() / 255.0),
        clipped_dark=float((pixels <= 5).mean()),
        clipped_bright=float((pixels >= 250).mean()),
        phash=perceptual_hash(image),
    )


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
        problems.append(f"underexposed (mean brightness {metrics.brightness:.2f})")
    if metrics.brightness > thresholds.max_brightness or metrics.clipped_bright > thresholds.max_clipped:
        problems.append(f"overexposed (mean brightness {metrics.brightness:.2f})")
    return problems


def quality_grade(metrics: QualityMetrics, thresholds: QualityThresholds) -> str:
    """'high', 'medium' or 'low', as seed 001's metadata.json records it."""
    if quality_problems(metrics, thresholds):
        return "low"
    sharp = metrics.sharpness >= 3 * thresholds.min_sharpness
    large = min(metrics.width, metrics.height) >= 512
    return "high" if sharp and large else "medium"


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
    """pHash: the signs of the 8x8 lowest DCT frequencies of a 32x32 grey copy, against their median."""
    small = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = (_DCT32 @ small @ _DCT32.T)[:8, :8].flatten()
    bits = low > np.median(low[1:])
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def hash_distance(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()
