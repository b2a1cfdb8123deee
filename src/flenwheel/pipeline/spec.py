"""The character spec of the wizard (seed 000/003): appearance and identity fields, and the prompts made from it.

A spec is stored as JSON in `Character.spec`; the same spec always renders the same prompts, so the same
spec gives the same seeds and, on the same engine, the same pixels.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated

from pydantic import Field, StringConstraints, ValidationError

from flenwheel.characters import CharacterInfo, create_character
from flenwheel.domain import Frozen
from flenwheel.errors import InvalidInput
from flenwheel.store.project import Project, get_character

# One short phrase: no newlines, nothing that could smuggle a second prompt in.
Phrase = Annotated[str, StringConstraints(strip_whitespace=True, max_length=80, pattern=r"^[^\n\r]*$")]

CLASS_FOR_GENDER = {"woman": "woman", "female": "woman", "man": "man", "male": "man"}


class CharacterSpec(Frozen):
    """What the wizard asks: who the character is (identity) and how they look (appearance)."""

    # identity
    name: Phrase = Field(min_length=1, max_length=64)
    token: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,47}$")
    class_word: str | None = Field(default=None, pattern=r"^[A-Za-z][A-Za-z ]{0,31}$")
    nsfw_allowed: bool = False
    # appearance
    age_range: Phrase = "25-30"
    gender_presentation: Phrase = "woman"
    ethnicity: Phrase = ""
    hair_colour: Phrase = ""
    hair_length: Phrase = ""
    hair_style: Phrase = ""
    eye_colour: Phrase = ""
    body_type: Phrase = ""
    distinguishing_features: tuple[Phrase, ...] = Field(default=(), max_length=8)
    style: Phrase = "photorealistic"

    @property
    def resolved_token(self) -> str:
        """The given trigger token, else `ohwx_` + the name's letters and digits."""
        if self.token:
            return self.token
        slug = re.sub(r"[^a-z0-9]+", "", self.name.lower())[:20] or "char"
        return f"ohwx_{slug}"

    @property
    def resolved_class(self) -> str:
        """The given class word, else woman / man from the gender presentation, else person."""
        if self.class_word:
            return self.class_word
        return CLASS_FOR_GENDER.get(self.gender_presentation.lower(), "person")

    def fingerprint(self) -> str:
        """Stable over runs and machines: the seeds of every stage derive from it."""
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()

    def appearance(self) -> str:
        """The appearance fields as one comma-separated description."""
        age = f"{self.age_range} years old" if self.age_range else ""
        hair = " ".join(p for p in (self.hair_length, self.hair_style, self.hair_colour) if p)
        parts = [
            age,
            self.ethnicity,
            f"{hair} hair" if hair else "",
            f"{self.eye_colour} eyes" if self.eye_colour else "",
            f"{self.body_type} build" if self.body_type else "",
            *self.distinguishing_features,
        ]
        return ", ".join(p for p in parts if p)

    def subject(self) -> str:
        """`ohwx_x woman, 25-30 years old, …` — the part every prompt of this character starts with."""
        return ", ".join(p for p in (f"{self.resolved_token} {self.resolved_class}", self.appearance()) if p)

    def prompt(self, scene: str = "") -> str:
        """A full prompt for this character in a scene, in the spec's style."""
        style = f"{self.style} photo" if self.style else "photo"
        return ", ".join(p for p in (f"{style} of {self.subject()}", scene) if p)

    def base_prompt(self) -> str:
        """Seed 000 step 1: a clean, well-lit portrait on a white background with natural skin."""
        return self.prompt(
            "head and shoulders portrait, clean white background, soft studio light, detailed skin"
        )


NEGATIVE = "cartoon, illustration, blurry, low quality, deformed face, extra limbs, watermark, text"


def load_spec(path: Path) -> CharacterSpec:
    """A spec from a YAML (or JSON) file; a bad field is a clear error naming it."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidInput(f"cannot read spec {path}: {exc.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"spec {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"spec {path} must be a mapping of fields (name, gender_presentation, …)")
    return parse_spec(data, str(path))


def parse_spec(data: dict[str, object], where: str = "spec") -> CharacterSpec:
    try:
        return CharacterSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        raise InvalidInput(f"{where}: {problems}") from None


def create_character_from_spec(
    project: Project,
    spec: CharacterSpec,
    budget_usd: float = 5.0,
    name: str | None = None,
    owner_id: int | None = None,
) -> CharacterInfo:
    """Create the character (token and class derived from the spec unless given) with its spec stored."""
    return create_character(
        project,
        name or spec.name,
        spec.resolved_token,
        spec.resolved_class,
        nsfw=spec.nsfw_allowed,
        budget_usd=budget_usd,
        owner_id=owner_id,
        spec=spec.model_dump(mode="json"),
    )


def character_spec(project: Project, name: str) -> CharacterSpec:
    """The stored spec; for a character made from photos, a minimal one from its token and class word."""
    with project.db.session() as session:
        character = get_character(session, name)
        if character.spec:
            return parse_spec(dict(character.spec), f"stored spec of {name!r}")
        return CharacterSpec(
            name=character.name,
            token=character.token,
            class_word=character.class_word,
            nsfw_allowed=character.nsfw,
            gender_presentation=character.class_word,
            age_range="",
        )
