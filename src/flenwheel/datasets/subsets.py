"""Named subsets of a character's dataset, each with its own repeats, caption tag and gate (seed 002).

Seed 002 trains its Qwen character LoRA on two folders: `40_maya_char/` (70 identity-checked images of the
character, 40 repeats) and `20_maya_char_realbody/` (30 real photos of bodies that show no face, 20 repeats,
captioned `realistic_body`) — 70:30 in images, 2800:600 ≈ 4.7:1 in steps. A subset is chosen at ingest
(`flenwheel ingest NAME PHOTOS --subset realbody`) and kept in the asset's attributes; the gate of the
`identity` kind asks for the character's face, the `body` kind for good quality and a visible body (the
body-pose model's person, poses/) instead of a face. Images ingested without a subset are the character
subset.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from flenwheel.domain import Frozen
from flenwheel.errors import InvalidInput

SUBSET_NAME = r"^[a-z0-9][a-z0-9_]{0,31}$"


class Subset(Frozen):
    """One named part of a dataset. `name` becomes the folder suffix (`<repeats>_<token>_<name>`)."""

    name: str = Field(pattern=SUBSET_NAME)
    repeats: int = Field(default=40, ge=1, le=1000)
    caption_tag: str | None = Field(default=None, max_length=48, pattern=r"^[A-Za-z0-9_\- ]+$")
    gate: Literal["identity", "body"] = "identity"


CHARACTER = Subset(name="char", repeats=40, gate="identity")
REALBODY = Subset(name="char_realbody", repeats=20, caption_tag="realistic_body", gate="body")
PRESETS = {"char": CHARACTER, "realbody": REALBODY}  # seed 002's two folders


def preset(name: str, repeats: int | None = None) -> Subset:
    """A named preset (char, realbody), its repeats overridden when given."""
    try:
        found = PRESETS[name]
    except KeyError:
        raise InvalidInput(f"unknown subset {name!r}: use one of {', '.join(PRESETS)}") from None
    return found if repeats is None else found.model_copy(update={"repeats": repeats})


def subset_of(attributes: dict[str, Any] | None) -> Subset:
    """The subset an asset was ingested into (its attributes' `subset`), else the character subset."""
    raw = (attributes or {}).get("subset")
    return Subset.model_validate(raw) if isinstance(raw, dict) else CHARACTER


def tagged(caption: str, subset: Subset) -> str:
    """The caption with the subset's tag after its first phrase (the trigger), once."""
    if not subset.caption_tag or subset.caption_tag in caption:
        return caption
    head, sep, rest = caption.partition(",")
    return f"{head}, {subset.caption_tag}{sep}{rest}" if sep else f"{caption}, {subset.caption_tag}"
