"""The PoseAnalyzer contract: an image in, the most prominent person's body pose (or None) out."""

from __future__ import annotations

from typing import Protocol

from PIL import Image

from flenwheel.domain import BodyPose


class PoseAnalyzer(Protocol):
    """Finds one person's 33 body landmarks and tags their pose (poses/geometry.py)."""

    id: str

    def analyze(self, image: Image.Image) -> BodyPose | None: ...
