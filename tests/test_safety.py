"""NSFW classification: nudenet on the fixture photos, and the prompt word list the router relies on."""

from __future__ import annotations

import io
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from flenwheel.errors import ImageRejected
from flenwheel.safety import NSFW_THRESHOLD, classify_image, classify_prompt, explicit_terms

from photos import FACES

PHOTOS = sorted(FACES.rglob("*.jpg"))  # 94: people (identities/, single/) and things (non_face/)
COFFEE = FACES / "non_face" / "1_coffee.jpg"


# -- images ----------------------------------------------------------------------------------------------------
def test_no_fixture_photo_is_nsfw() -> None:
    """Measured: 89 of the 94 carry some detection (mostly faces); the highest explicit-label score is 0.30."""
    assert len(PHOTOS) >= 90
    verdicts = {path.relative_to(FACES).as_posix(): classify_image(path.read_bytes()) for path in PHOTOS}
    flagged = {name: v for name, v in verdicts.items() if v.nsfw or v.labels}
    assert not flagged
    assert max(v.score for v in verdicts.values()) < NSFW_THRESHOLD - 0.05


def test_the_score_is_the_strongest_explicit_detection_and_labels_say_what_crossed_the_threshold() -> None:
    """nudenet reads the coffee cup as BUTTOCKS_EXPOSED at 0.30: a real detection, below the threshold."""
    default = classify_image(COFFEE.read_bytes())
    assert default.nsfw is False and default.labels == [] and 0.25 < default.score < NSFW_THRESHOLD

    stricter = classify_image(COFFEE.read_bytes(), threshold=0.25)
    assert stricter.nsfw is True and stricter.labels == ["BUTTOCKS_EXPOSED"]
    assert stricter.score == default.score


def test_any_decodable_format_and_mode_is_classified() -> None:
    with Image.open(FACES / "identities" / "lisa" / "1.jpg") as photo:
        grey = photo.convert("L")
        transparent = photo.convert("RGBA")
    for image, fmt in ((grey, "PNG"), (transparent, "PNG"), (grey, "WEBP")):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        verdict = classify_image(buffer.getvalue())
        assert verdict.nsfw is False and 0.0 <= verdict.score <= 1.0


@pytest.mark.parametrize(
    "data", [b"", b"not an image", b"\x89PNG\r\n\x1a\n"], ids=["empty", "text", "header"]
)
def test_an_undecodable_image_is_rejected_not_guessed(data: bytes) -> None:
    with pytest.raises(ImageRejected):
        classify_image(data)


# -- prompts ---------------------------------------------------------------------------------------------------
ORDINARY = [
    "portrait of ohwx woman, smiling, studio lighting",
    "photo of ohwx man at the beach in swim shorts",
    "ohwx woman in a red bikini by the pool, golden hour",
    "ohwx man, shirtless, running on a track, sweat",
    "sexy ohwx woman in a black evening dress, sensual, seductive look",
    "ohwx woman in lingerie, boudoir photo, soft light",
    "a cocktail bar in Scunthorpe, analysis of light, Essex, Middlesex",
    "a grapes still life, therapist's office, cockpit of a plane, a shuttlecock",
    "summa cum laude graduation photo",
    "reading Moby Dick, Philip K. Dick portrait",
    "blue tits on a branch, a pussy willow in spring",
    "chicken breast on a plate, breast cancer awareness ribbon, double-breasted suit",
    "1girl, solo, upper body, looking at viewer, (masterpiece:1.2)",
    "",
]
EXPLICIT = [
    "nude portrait of ohwx woman",
    "ohwx woman, naked, on a bed",
    "NSFW, ohwx woman",
    "topless ohwx woman on the beach",
    "ohwx woman showing her nipples",
    "porn still of ohwx",
    "ohwx woman having sex",
    "hentai, ohwx",
    "ohwx woman without clothes",
    "ohwx woman wearing nothing but a smile",
    "bare breasts",
    "ohwx nudes",
]
OBFUSCATED = [
    "n*de ohwx woman",
    "p#rn",
    "NuDe",
    "nud3 ohwx",
    "p0rn, pr0n",
    "$ex scene",
    "n u d e",
    "n.u.d.e",
    "s-e-x",
    "nuuuude",
    "completely_nude, 1girl",
    "(nude:1.3), [naked]",
    "#nsfw",
    "nüde",  # accent
    "nu\u200bde",  # zero-width space
    "nud\u0435",  # Cyrillic e
    "ｎｕｄｅ",  # full-width
    "b00bs",
    "pornstars",
]
# Decided borderline cases (see flenwheel.safety): True = kept off external providers.
BORDERLINE = [
    ("topless man at the beach", True),  # topless is flagged for anyone
    ("a cock crowing at dawn", True),  # the rooster loses: a false flag only keeps the work local
    ("sex: female, age 30", True),
    ("ohwx woman, cleavage", False),
    ("see-through blouse", False),
    ("her large breasts", False),
    ("p**n", False),  # two masked letters in four could be anything
    ("nudeart", False),  # whole words only
]


@pytest.mark.parametrize("prompt", ORDINARY)
def test_ordinary_prompts_may_go_to_any_provider(prompt: str) -> None:
    assert classify_prompt(prompt) is False, explicit_terms(prompt)


@pytest.mark.parametrize("prompt", EXPLICIT + OBFUSCATED)
def test_explicit_prompts_are_flagged_even_when_disguised(prompt: str) -> None:
    assert classify_prompt(prompt) is True


@pytest.mark.parametrize(("prompt", "flagged"), BORDERLINE)
def test_borderline_prompts_are_decided_as_documented(prompt: str, flagged: bool) -> None:
    assert classify_prompt(prompt) is flagged


def test_explicit_terms_name_what_was_found() -> None:
    assert explicit_terms("n*de ohwx woman, without clothes, NSFW") == ["without clothes", "nude", "nsfw"]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=4000))
def test_classify_prompt_never_raises(text: str) -> None:
    assert classify_prompt(text) in (True, False)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.text(max_size=300))
def test_a_flagged_word_is_found_whatever_surrounds_it(before: str, after: str) -> None:
    assert classify_prompt(f"{before} nude {after}") is True


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=string.printable, max_size=300))
def test_case_never_changes_the_verdict(text: str) -> None:
    assert classify_prompt(text) == classify_prompt(text.upper()) == classify_prompt(text.lower())
