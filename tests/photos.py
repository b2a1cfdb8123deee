"""Where the test photos are (tests/fixtures/faces, a copy of ../shared/faces with its ATTRIBUTION.md)."""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
FACES = FIXTURES / "faces"
POSES = FIXTURES / "poses"  # CC0 photos of people in known poses, with their ATTRIBUTION.md
LISA = sorted((FACES / "identities" / "lisa").glob("*.jpg"))


def london(n: int, expression: str = "neutral") -> Path:
    return FACES / "identities" / f"london_{n:03d}" / f"{expression}.jpg"
