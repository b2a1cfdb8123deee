"""NSFW classification of images (nudenet) and prompts (a word list), and the policy the router enforces.

Policy
- NSFW work never leaves machines the user controls. A request may go to a provider with
  `allows_nsfw = False` (fal, Replicate: external APIs whose terms forbid explicit content) only when the
  character is not marked NSFW, the request does not say `nsfw=True`, its prompt does not classify as NSFW
  (`classify_prompt`), and none of its input images does (`classify_image`, or the score stored on the
  asset: an upscale has no prompt, only its image). Everything else runs on the embedded engines or the
  user's own ComfyUI server. Nothing is refused here: flagging only decides *where* work may run.
- A wrong flag only keeps work local, while a miss sends explicit work to an external API, so both
  classifiers lean towards flagging.

Images: nudenet's detector (a YOLOv8n ONNX model that ships in its wheel, ~40 ms an image on a CPU) finds
body parts. An image is NSFW when it finds one of `EXPLICIT_LABELS` (exposed genitals, anus, female breasts
or buttocks) with a score of at least `NSFW_THRESHOLD`. The verdict's `score` is the highest explicit-label
score (0 when there is none), so stored scores can be re-thresholded later. Faces, covered body parts, bare
feet, armpits and bellies, and a bare male chest are not explicit.

Prompts: `classify_prompt` matches whole words (never inside other words: "cocktail", "Scunthorpe" and
"analysis" pass) after undoing common obfuscations — case, accents and look-alike letters, zero-width
characters, leetspeak ("nud3", "p0rn", "$ex"), one masked letter in three ("n*de", "p#rn"), letters spelled
out ("n u d e", "s.e.x"), stretched letters ("nuuude"), and tag syntax ("completely_nude", "(nude:1.2)").
Decided borderline cases:
  - clothed but suggestive is *not* flagged: sexy, sensual, seductive, lingerie, bikini, swimsuit, swim
    shorts, underwear, shirtless, cleavage, "bare chest", see-through, breasts/butt on their own;
  - flagged although sometimes innocent: topless (also a shirtless man), sex (also "biological sex"),
    cock (also a rooster), dick (also a name: "Moby Dick" and "Philip K. Dick" are exempt), cum (also
    "kitchen-cum-diner"; "cum laude" is exempt), erection, spread legs; "pussy willow" and the birds
    ("blue tits") are exempt;
  - always flagged, so they never reach an external API: sexualised minors and sexual violence terms.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from functools import cache
from typing import Any

from pydantic import Field

from flenwheel.domain import Frozen
from flenwheel.errors import MissingDependency
from flenwheel.images import decode_image

# The highest explicit-label score nudenet gave any of the 94 SFW photos in tests/fixtures/faces is 0.30
# (a cup of coffee read as BUTTOCKS_EXPOSED); nudenet itself reports detections from 0.20. 0.40 keeps a
# margin above that while erring towards flagging. Recall on explicit images is not measured here: the
# repository holds none.
NSFW_THRESHOLD = 0.40
EXPLICIT_LABELS = frozenset(
    {
        "FEMALE_GENITALIA_EXPOSED",
        "MALE_GENITALIA_EXPOSED",
        "ANUS_EXPOSED",
        "FEMALE_BREAST_EXPOSED",
        "BUTTOCKS_EXPOSED",
    }
)
# nudenet letterboxes every image to 320 px; shrinking first only saves work on large photos.
_DETECT_MAX_SIDE = 640


class NsfwVerdict(Frozen):
    """`score`: the highest explicit-label score (0..1); `labels`: the explicit labels at or above the threshold."""

    score: float = Field(ge=0.0, le=1.0)
    nsfw: bool
    labels: list[str]


# -- images ----------------------------------------------------------------------------------------------------
_DETECTOR_LOCK = threading.Lock()


@cache
def _detector() -> Any:
    try:
        from nudenet import NudeDetector
    except ImportError as exc:
        raise MissingDependency(f"nudenet ({exc})", "safety") from exc
    return NudeDetector()


def _loaded_detector() -> Any:
    with _DETECTOR_LOCK:  # load once per process, even when two workers ask at the same moment
        return _detector()


def classify_image(data: bytes, threshold: float = NSFW_THRESHOLD) -> NsfwVerdict:
    """Whether a PNG/JPEG/… shows explicit nudity. Undecodable input raises `ImageRejected`."""
    import numpy as np

    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")

    image = decode_image(data).image
    if max(image.size) > _DETECT_MAX_SIDE:
        image = image.copy()
        image.thumbnail((_DETECT_MAX_SIDE, _DETECT_MAX_SIDE))
    # nudenet turns an RGBA array into BGR and then swaps to RGB, the order its YOLO model was trained on.
    detections = _loaded_detector().detect(np.asarray(image.convert("RGBA")))
    explicit = sorted(
        ((str(d["class"]), float(d["score"])) for d in detections if d["class"] in EXPLICIT_LABELS),
        key=lambda found: -found[1],
    )
    score = round(min(1.0, max((found_score for _, found_score in explicit), default=0.0)), 4)
    labels = list(dict.fromkeys(label for label, found in explicit if round(found, 4) >= threshold))
    return NsfwVerdict(score=score, nsfw=score >= threshold, labels=labels)


# -- prompts ---------------------------------------------------------------------------------------------------
FLAGGED_WORDS = frozenset(
    {
        # nudity
        *("nude", "nudes", "nudity", "nudist", "nudists", "nudism", "naked", "nakedness"),
        *("topless", "bottomless", "undressed", "unclothed", "disrobed", "nsfw", "uncensored"),
        # anatomy
        *("nipple", "nipples", "areola", "areolas", "areolae", "genital", "genitals", "genitalia"),
        *("penis", "penises", "vagina", "vaginas", "vaginal", "vulva", "vulvas", "labia", "clitoris"),
        *("clit", "pubic", "anus", "anal", "erection", "cameltoe"),
        *("pussy", "pussies", "cock", "cocks", "dick", "dicks", "tits", "titty", "titties"),
        *("boob", "boobs", "boobies"),
        # sex
        *("sex", "sexual", "sexually", "intercourse", "coitus", "porn", "porno", "pron", "pornographic"),
        *("pornography", "pornstar", "xxx", "hentai", "ecchi", "erotic", "erotica", "lewd", "orgy"),
        *("orgies", "gangbang", "threesome", "bdsm", "bondage", "blowjob", "blowjobs", "handjob"),
        *("handjobs", "footjob", "fellatio", "cunnilingus", "orgasm", "orgasms", "orgasmic"),
        *("masturbate", "masturbates", "masturbating", "masturbation", "ejaculate", "ejaculating"),
        *("ejaculation", "cum", "cumshot", "creampie", "bukkake", "striptease", "upskirt", "milf"),
        # sexualised minors and sexual violence: flagged so they never reach an external API
        *("loli", "lolicon", "shota", "shotacon", "rape", "raped", "incest"),
    }
)
FLAGGED_PHRASES = (
    re.compile(r"\b(?:without|no|not wearing any|wearing no) (?:clothes|clothing)\b"),
    re.compile(r"\bwearing nothing\b"),
    re.compile(r"\bbirthday suit\b"),
    re.compile(r"\b(?:bare|exposed|naked) (?:breasts?|buttocks|butt|ass|bottom|crotch)\b"),
    re.compile(r"\bbreasts? (?:out|exposed)\b"),
    re.compile(r"\bspread(?:ing)? (?:her |his |their )?legs\b"),
)
# Innocent phrases that contain a flagged word; removed before matching.
EXEMPT_PHRASES = re.compile(
    r"\b(?:(?:summa |magna )?cum laude|moby dick|philip k dick|pussy willows?|"
    r"(?:blue|great|coal|marsh|willow|crested|bearded|penduline|long tailed) tits)\b"
)
_LEET = str.maketrans("0134578@$!", "oieastbasi")
_LOOKALIKES = str.maketrans("аеорсхуіѕјԁοαικνı", "aeopcxyisjdoaikvi")  # Cyrillic, Greek, dotless i
_MASKS = frozenset("*#?")
_PIECE = re.compile(r"[a-z0-9@$!*#?]+")  # anything else separates words
_STRETCHED = re.compile(r"(.)\1{2,}")  # three or more of one letter
_FORMS_BY_LENGTH = {
    length: tuple(sorted(word for word in FLAGGED_WORDS if len(word) == length))
    for length in {len(word) for word in FLAGGED_WORDS}
}


def _normalised(text: str) -> str:
    """Casefolded ASCII-ish text: accents and zero-width characters dropped, look-alike letters mapped."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    kept = "".join(c for c in decomposed if not unicodedata.combining(c) and unicodedata.category(c) != "Cf")
    return kept.translate(_LOOKALIKES)


def _words(text: str) -> list[str]:
    """The words of normalised text, with letters spelled out one by one ("n u d e") joined into one word."""
    pieces = [piece.strip("!?#*") for piece in _PIECE.findall(text)]
    words: list[str] = []
    run: list[str] = []
    for piece in [*pieces, ""]:
        if len(piece) == 1:
            run.append(piece)
            continue
        words.extend(["".join(run)] if len(run) >= 3 else run)
        run = []
        if piece:
            words.append(piece)
    return [word.translate(_LEET) for word in words]


def _masked_match(word: str) -> str | None:
    """The flagged word that `word` spells with at most one letter in three masked ("n*de"), if any."""
    masked = sum(c in _MASKS for c in word)
    if not masked or len(word) < 3 or word[0] in _MASKS or masked > max(1, len(word) // 3):
        return None
    for form in _FORMS_BY_LENGTH.get(len(word), ()):
        if all(c == f or c in _MASKS for c, f in zip(word, form, strict=True)):
            return form
    return None


def explicit_terms(text: str) -> list[str]:
    """The flagged words and phrases a prompt contains, as they read once de-obfuscated (empty: none)."""
    flat = EXEMPT_PHRASES.sub(" ", " ".join(_words(_normalised(text))))
    found = [match.group() for phrase in FLAGGED_PHRASES for match in phrase.finditer(flat)]
    for word in flat.split():
        variants = [word, _STRETCHED.sub(r"\1", word), _STRETCHED.sub(r"\1\1", word)]
        variants += [v[:-1] for v in variants if v.endswith("s") and len(v) > 3]  # plurals: "pornstars"
        hit = next((v for v in variants if v in FLAGGED_WORDS), None)
        if hit is None:
            hit = next((m for v in variants if (m := _masked_match(v)) is not None), None)
        if hit is not None:
            found.append(hit)
    return list(dict.fromkeys(found))


def classify_prompt(text: str) -> bool:
    """True when a prompt asks for explicit content, so the router keeps it off external providers."""
    return bool(explicit_terms(text))
