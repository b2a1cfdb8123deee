"""Caption templates: seed 001's style, clauses dropped for unknown facts, templates refused early."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from flenwheel.captions import (
    DEFAULT_TEMPLATE,
    check_caption,
    normalise_caption,
    render_caption,
    validate_template,
)
from flenwheel.errors import InvalidInput


def render(
    template: str = DEFAULT_TEMPLATE,
    angle: str | None = "front",
    shot: str | None = "close-up",
    expression: str | None = "neutral",
) -> str:
    return render_caption(template, "ohwx", "woman", angle=angle, shot=shot, expression=expression)


def test_default_template_renders_seed_001_style() -> None:
    assert render() == "photo of ohwx woman, neutral expression, front view, close-up"


def test_unknown_facts_drop_their_clause() -> None:
    assert render(angle=None) == "photo of ohwx woman, neutral expression, close-up"
    assert render(angle=None, shot=None, expression=None) == "photo of ohwx woman"
    assert "None" not in render(expression=None)


def test_default_template_is_valid() -> None:
    assert validate_template(DEFAULT_TEMPLATE) == DEFAULT_TEMPLATE


def test_unknown_field_is_refused_by_name() -> None:
    with pytest.raises(InvalidInput) as info:
        validate_template("photo of {token}, {mood} mood")
    assert "mood" in str(info.value)
    assert "class_word" in str(info.value)  # the message lists what is allowed


@pytest.mark.parametrize("template", ["photo of {token", "photo of {token}}", "photo of token}"])
def test_malformed_braces_are_refused(template: str) -> None:
    with pytest.raises(InvalidInput, match="malformed"):
        validate_template(template)


def test_template_without_token_is_refused() -> None:
    with pytest.raises(InvalidInput, match=r"\{token\}"):
        validate_template("photo of a {class_word}, {angle} view")


def test_escaped_braces_are_not_a_token() -> None:
    with pytest.raises(InvalidInput, match=r"\{token\}"):
        validate_template("photo of {{token}}")


@pytest.mark.parametrize("caption", ["", "   ", "\n\t \n"])
def test_empty_captions_are_refused(caption: str) -> None:
    with pytest.raises(InvalidInput, match="empty"):
        check_caption(caption, "ohwx")


def test_caption_without_the_token_is_refused_naming_it() -> None:
    with pytest.raises(InvalidInput, match="ohwx"):
        check_caption("photo of a woman, front view", "ohwx")


def test_caption_whitespace_is_collapsed() -> None:
    assert (
        check_caption("  photo of\n ohwx\t\twoman,  close-up \n", "ohwx") == "photo of ohwx woman, close-up"
    )


def test_token_survives_when_it_shares_a_clause_with_an_unknown_fact() -> None:
    template = validate_template("{angle} photo of {token} {class_word}, {shot}")
    caption = render(template, angle=None)
    assert check_caption(caption, "ohwx") == "photo of ohwx woman, close-up"


@pytest.mark.parametrize("template", ["{token:,}", "{token:d}", "{token!x}", "{token:{bogus}}"])
def test_a_template_that_validates_also_renders(template: str) -> None:
    try:
        validate_template(template)
    except InvalidInput:
        return
    render(template)


FACT = st.none() | st.text(max_size=20)
LOWER_CASE_FACT = st.none() | st.text(alphabet="abcdefghijklmnopqrstuvwxyz -", max_size=12)
FIELD_NAMES = ["token", "class_word", "angle", "shot", "expression"]
# pieces that stress the parser: fields, stray and doubled braces, format specs, conversions, commas
PIECES = st.sampled_from(
    [f"{{{name}}}" for name in FIELD_NAMES]
    + ["{", "}", "{{", "}}", ":", "!", "!r", ":>5", ",", ", ", " ", "photo of", "{mood}", "{0}", "{}"]
)
TEMPLATE_TEXT = st.text() | st.lists(PIECES, max_size=12).map("".join)


@settings(max_examples=300, deadline=None)
@given(TEMPLATE_TEXT)
def test_validate_template_returns_the_text_or_raises_invalid_input(template: str) -> None:
    try:
        assert validate_template(template) == normalise_caption(template)
    except InvalidInput as error:
        assert str(error)


@settings(max_examples=300, deadline=None)
@given(TEMPLATE_TEXT, FACT, FACT, FACT)
@example("{token:,}", "front", "close-up", "neutral")
def test_any_accepted_template_renders_for_any_facts(
    template: str, angle: str | None, shot: str | None, expression: str | None
) -> None:
    try:
        validate_template(template)
    except InvalidInput:
        return
    assert isinstance(render(template, angle=angle, shot=shot, expression=expression), str)


# templates without format specs or conversions: the ones flenwheel's docs show
PLAIN_TEMPLATE = st.lists(
    st.sampled_from([f"{{{name}}}" for name in FIELD_NAMES] + [", ", " ", "photo of", " view", ","]),
    max_size=10,
).map(lambda pieces: "{token}, " + "".join(pieces))


@settings(max_examples=300, deadline=None)
@given(PLAIN_TEMPLATE, LOWER_CASE_FACT, LOWER_CASE_FACT, LOWER_CASE_FACT)
def test_plain_templates_render_without_none_and_keep_the_token(
    template: str, angle: str | None, shot: str | None, expression: str | None
) -> None:
    validate_template(template)
    caption = render(template, angle=angle, shot=shot, expression=expression)
    assert caption.startswith("ohwx")
    assert "None" not in caption  # facts are lower-case, so "None" could only come from a missing one


# What users paste: a "UTF-8 with BOM" file's first line, a zero-width space after the trigger, a word joiner,
# a soft hyphen, a right-to-left mark, a no-break space, and an "é" written as e + combining accent (NFD).
INVISIBLE = "\ufeffphoto of ohwx\u200b woman,\u2060 smi\u00adling\u200e,\u00a0cafe\u0301  terrace"


def test_invisible_characters_are_removed_and_text_composed() -> None:
    """Issue 10 case 12: the BOM and zero-width characters never reach a caption."""
    clean = "photo of ohwx woman, smiling, café terrace"
    assert normalise_caption(INVISIBLE) == clean
    assert check_caption(INVISIBLE, "ohwx") == clean
    assert check_caption(INVISIBLE, "ohwx").encode() == clean.encode()  # NFC: é is one code point
    with pytest.raises(InvalidInput, match="empty"):
        check_caption("\ufeff\u200b \u200d", "ohwx")


def test_templates_are_normalised_on_the_way_in_and_when_rendered() -> None:
    template = "\ufeffphoto of {token}\u200b {class_word}, {angle} view"
    assert validate_template(template) == "photo of {token} {class_word}, {angle} view"
    assert render(template) == "photo of ohwx woman, front view"


@given(st.text(max_size=40))
def test_normalised_captions_hold_no_format_characters_and_are_stable(text: str) -> None:
    import unicodedata

    clean = normalise_caption(text)
    assert not any(unicodedata.category(char) == "Cf" for char in clean)
    assert clean == clean.strip() and "  " not in clean
    assert normalise_caption(clean) == clean
