"""Caption templates with the trigger token and class word, in seed 001's prompt style."""

from __future__ import annotations

import re
import string
import unicodedata

from flenwheel.errors import InvalidInput

DEFAULT_TEMPLATE = "photo of {token} {class_word}, {expression} expression, {angle} view, {shot}"
FIELDS = {"token", "class_word", "angle", "shot", "expression"}


def validate_template(template: str) -> str:
    """The template, normalised like a caption (`normalise_caption`); refuses unknown placeholders and
    templates without the trigger token."""
    template = normalise_caption(template)
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise InvalidInput(
            f"caption template {template!r} is malformed ({exc}); use {{token}}-style fields"
        ) from None
    if any(spec or conversion for _, _, spec, conversion in parsed):
        raise InvalidInput(
            f"caption template {template!r} uses a format spec or conversion (':' or '!'); write plain {{field}}s"
        )
    names = {name for _, name, _, _ in parsed if name is not None}
    unknown = names - FIELDS
    if unknown:
        raise InvalidInput(
            f"caption template uses unknown field(s) {sorted(unknown)}; allowed: {sorted(FIELDS)}"
        )
    if "token" not in names:
        raise InvalidInput("caption template must contain {token}: trainers learn the character from it")
    return template


def render_caption(
    template: str, token: str, class_word: str, angle: str | None, shot: str | None, expression: str | None
) -> str:
    """Fill the template. A comma-separated clause whose fact is unknown is dropped rather than printed as
    'None' — except the clause with the trigger token, where only the unknown fact is left out."""
    facts = {"token": token, "class_word": class_word, "angle": angle, "shot": shot, "expression": expression}
    clauses = []
    for clause in template.split(","):
        names = {name for _, name, _, _ in string.Formatter().parse(clause) if name}
        if "token" not in names and any(facts.get(name) is None for name in names):
            continue
        filled = clause.format(**{name: "" if value is None else value for name, value in facts.items()})
        clauses.append(normalise_caption(filled))
    return ", ".join(clause for clause in clauses if clause)


MAX_CAPTION_CHARS = 2000


def token_pattern(token: str) -> re.Pattern[str]:
    """The token as a whole word: `ohwx` is in 'photo of ohwx woman' but not in 'ohwxyz'."""
    return re.compile(rf"(?<![\w-]){re.escape(token)}(?![\w-])")


def normalise_caption(caption: str) -> str:
    """The caption as trainers should read it: Unicode format characters (Cf: the BOM U+FEFF, zero-width
    spaces and joiners, soft hyphens, direction marks) removed, composed to NFC, every run of whitespace (tabs,
    newlines, no-break spaces) one ASCII space, no space at either end.

    Invisible characters are not harmless: sd-scripts reads a BOM-prefixed caption's first tag as
    '\ufeffphoto of …', and CLIP turns each zero-width character into tokens beside the trigger."""
    visible = "".join(char for char in caption if unicodedata.category(char) != "Cf")
    return " ".join(unicodedata.normalize("NFC", visible).split())


def check_caption(caption: str, token: str) -> str:
    """The normalised caption (`normalise_caption`), or `InvalidInput` saying what to fix."""
    if any(unicodedata.category(char) == "Cc" and char not in "\t\n\r" for char in caption):
        raise InvalidInput("caption contains control characters: write plain text")
    caption = normalise_caption(caption)
    if not caption:
        raise InvalidInput("caption is empty: kohya refuses empty caption files")
    if len(caption) > MAX_CAPTION_CHARS:
        raise InvalidInput(f"caption is {len(caption)} characters; keep it under {MAX_CAPTION_CHARS}")
    if not token_pattern(token).search(caption):
        raise InvalidInput(
            f"caption must contain the trigger token {token!r} so the trainer ties it to the character"
        )
    return caption
