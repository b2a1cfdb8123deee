"""The FaceAnalyzer contract: an image in, the faces found in it out."""

from __future__ import annotations

from typing import Protocol

from PIL import Image

from flenwheel.domain import Face


class FaceAnalyzer(Protocol):
    """Finds faces with box, 68 landmarks, identity embedding, yaw and detector score."""

    id: str

    def analyze(self, image: Image.Image) -> list[Face]: ...
