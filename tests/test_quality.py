"""Quality gates and perceptual hashes on real photos from tests/fixtures/faces."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from flenwheel.images import decode_image
from flenwheel.quality import (
    QualityThresholds,
    hash_distance,
    is_greyscale,
    measure_quality,
    near_colour,
    perceptual_hash,
    quality_grade,
    quality_problems,
)

FACES = Path(__file__).parent / "fixtures" / "faces"
THRESHOLDS = QualityThresholds()


def photo(relative: str) -> Image.Image:
    with Image.open(FACES / relative) as image:
        return image.convert("RGB")


@pytest.fixture(scope="module")
def lisa() -> Image.Image:
    return photo("identities/lisa/1.jpg")


def problems(image: Image.Image) -> list[str]:
    return quality_problems(measure_quality(image), THRESHOLDS)


def has_problem(image: Image.Image, word: str) -> bool:
    return any(problem.startswith(word) for problem in problems(image))


def test_a_good_photo_passes_every_gate(lisa: Image.Image) -> None:
    metrics = measure_quality(lisa)
    assert (metrics.width, metrics.height) == lisa.size
    assert problems(lisa) == []


def test_blurred_copy_is_reported_blurry(lisa: Image.Image) -> None:
    blurred = lisa.filter(ImageFilter.GaussianBlur(radius=6))
    assert measure_quality(blurred).sharpness < measure_quality(lisa).sharpness / 5
    assert has_problem(blurred, "blurry")
    assert not has_problem(lisa, "blurry")


def test_very_dark_copy_is_reported_underexposed(lisa: Image.Image) -> None:
    dark = ImageEnhance.Brightness(lisa).enhance(0.08)
    assert has_problem(dark, "underexposed")
    assert not has_problem(dark, "overexposed")


def test_near_white_copy_is_reported_overexposed(lisa: Image.Image) -> None:
    washed_out = Image.blend(lisa, Image.new("RGB", lisa.size, "white"), 0.95)
    assert has_problem(washed_out, "overexposed")
    assert not has_problem(washed_out, "underexposed")


def test_small_copy_is_reported_low_resolution_with_its_size(lisa: Image.Image) -> None:
    small = lisa.resize((200, 150), Image.Resampling.LANCZOS)
    reported = problems(small)
    assert any(problem.startswith("low resolution 200x150") for problem in reported)
    assert not has_problem(lisa, "low resolution")


def test_thresholds_are_what_decide(lisa: Image.Image) -> None:
    strict = QualityThresholds(min_side=1024)
    assert any("low resolution" in p for p in quality_problems(measure_quality(lisa), strict))


def test_quality_grade_orders_good_smaller_and_bad_photos(lisa: Image.Image) -> None:
    def grade(image: Image.Image) -> str:
        return quality_grade(measure_quality(image), THRESHOLDS)

    assert grade(lisa) == "high"  # 600x800 and sharp
    assert grade(lisa.resize((300, 400), Image.Resampling.LANCZOS)) == "medium"  # sharp but < 512 px
    assert grade(lisa.filter(ImageFilter.GaussianBlur(radius=6))) == "low"
    assert grade(lisa.resize((200, 150))) == "low"


def test_perceptual_hash_is_64_bits_of_hex(lisa: Image.Image) -> None:
    digest = perceptual_hash(lisa)
    assert len(digest) == 16
    int(digest, 16)
    assert measure_quality(lisa).phash == digest
    assert hash_distance(digest, digest) == 0


def test_resized_recompressed_copy_is_a_near_duplicate(lisa: Image.Image) -> None:
    buffer = io.BytesIO()
    lisa.resize((lisa.width // 2, lisa.height // 2), Image.Resampling.BILINEAR).save(
        buffer, "JPEG", quality=70
    )
    copy = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    assert hash_distance(perceptual_hash(lisa), perceptual_hash(copy)) <= 6


@pytest.mark.parametrize("other", ["identities/london_001/neutral.jpg", "non_face/4_brick.jpg"])
def test_different_photos_are_not_near_duplicates(lisa: Image.Image, other: str) -> None:
    assert hash_distance(perceptual_hash(lisa), perceptual_hash(photo(other))) > 6


def test_hash_distance_counts_differing_bits() -> None:
    assert hash_distance("0000000000000000", "ffffffffffffffff") == 64
    assert hash_distance("00000000000000ff", "000000000000000f") == 4


def _on_white(image: Image.Image, transparent: bool) -> Image.Image:
    """A head-and-shoulders cutout (an ellipse, ~38 % of the frame removed), either as flenwheel stores a
    transparent PNG (decoded, flattened onto white) or pasted onto a white studio backdrop and saved as JPEG."""
    mask = Image.new("L", image.size, 0)
    width, height = image.size
    ImageDraw.Draw(mask).ellipse((0.12 * width, 0.04 * height, 0.88 * width, 1.3 * height), fill=255)
    buffer = io.BytesIO()
    if transparent:
        cutout = image.copy()
        cutout.putalpha(mask)
        cutout.save(buffer, "PNG")
    else:
        backdrop = Image.new("RGB", image.size, "white")
        backdrop.paste(image, mask=mask)
        backdrop.save(buffer, "JPEG", quality=92)
    return decode_image(buffer.getvalue()).image


@pytest.mark.parametrize("transparent", [True, False], ids=["transparent-cutout", "white-backdrop"])
def test_a_white_background_is_not_counted_as_overexposure(lisa: Image.Image, transparent: bool) -> None:
    metrics = measure_quality(_on_white(lisa, transparent))
    assert 0.35 <= metrics.background <= 0.42  # the white around the ellipse, found from the border
    assert metrics.clipped_bright < 0.05 and not has_problem(_on_white(lisa, transparent), "overexposed")
    assert measure_quality(lisa).background == 0.0  # lisa's own room is no plain backdrop


def test_a_blown_out_face_on_white_is_still_overexposed() -> None:
    """Clipped skin and the white fill are the same 255: the face boxes (as curate passes them, from dlib)
    keep the background from swallowing a blown-out face."""
    from flenwheel.datasets.analysis import analyze_image
    from flenwheel.faces.dlib_backend import DlibFaceAnalyzer

    analyzer = DlibFaceAnalyzer(detect_max_side=640)
    for brightness in (1.8, 2.2):
        blown = _on_white(ImageEnhance.Brightness(photo("identities/lisa/5.jpg")).enhance(brightness), True)
        analysis = analyze_image(blown, analyzer)
        assert len(analysis.faces) == 1
        assert measure_quality(blown).background > analysis.quality.background  # the face was kept
        reported = quality_problems(analysis.quality, THRESHOLDS)
        assert any(p.startswith("overexposed") and "of the subject" in p for p in reported), reported


def test_greyscale_copies_are_told_from_colour(lisa: Image.Image) -> None:
    assert not is_greyscale(measure_quality(lisa))
    assert is_greyscale(measure_quality(ImageOps.grayscale(lisa).convert("RGB")))
    assert measure_quality(lisa).chroma > 0.05


@settings(max_examples=200)
@given(
    pixels=st.lists(st.integers(0, 255), min_size=3 * 12, max_size=3 * 12),
    reference=st.tuples(*[st.integers(0, 510).map(lambda v: v / 2) for _ in range(3)]),
    tolerance=st.integers(0, 30),
)
def test_near_colour_is_the_float_comparison_it_replaces(
    pixels: list[int], reference: tuple[float, float, float], tolerance: int
) -> None:
    """The integer-bounds mask (issue 13: curation speed) picks exactly the pixels the float comparison did —
    with a median reference, whole or half numbers — so every stored quality measure stays the same."""
    colour = np.asarray(pixels, dtype=np.int16).reshape(3, 4, 3)
    ref = np.asarray(reference)
    assert np.array_equal(near_colour(colour, ref, tolerance), np.abs(colour - ref).max(axis=2) <= tolerance)
