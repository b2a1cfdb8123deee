"""dlib face analysis with the face_recognition models (weights ship on PyPI in face_recognition_models).

Detection runs on a copy at most `detect_max_side` pixels long without upsampling (faces of ~80 px and up,
four times cheaper than face_recognition's default); only when that finds nothing does it look again at up
to twice that size with one upsample (faces down to ~3 % of the long side: full-body shots). Landmarks and
the 128-d embedding are computed on the full image so small faces keep their detail. The embedding uses the 5-point alignment exactly as
face_recognition.face_encodings does, and the same network (run with numpy: faces/dlib_resnet.py), so distances
match that library's to 1e-6 (and its 0.6 convention).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from flenwheel.domain import Face
from flenwheel.errors import MissingDependency
from flenwheel.faces.dlib_resnet import CHIP_PADDING, CHIP_SIZE, DlibResNet
from flenwheel.faces.geometry import estimate_yaw


class DlibFaceAnalyzer:
    """HOG detector + 68/5-point shape predictors + ResNet embedding, loaded once per process."""

    id = "dlib-hog-v1"

    def __init__(self, detect_max_side: int = 640, max_upsample: int = 1) -> None:
        dlib, models = self.load_modules()
        self._dlib: Any = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._pose68 = dlib.shape_predictor(models.pose_predictor_model_location())
        self._pose5 = dlib.shape_predictor(models.pose_predictor_five_point_model_location())
        # dlib's descriptor network, run with numpy (faces/dlib_resnet.py: ≈4× faster, same descriptors)
        self._encoder = DlibResNet(Path(models.face_recognition_model_location()))
        self.detect_max_side = detect_max_side
        self.max_upsample = max_upsample

    @staticmethod
    def _resized(image: Image.Image, scale: float) -> np.ndarray:
        size = (round(image.width * scale), round(image.height * scale))
        return np.ascontiguousarray(np.asarray(image.convert("RGB").resize(size, Image.Resampling.BILINEAR)))

    @staticmethod
    def load_modules() -> tuple[Any, Any]:
        """Import dlib and the model package, or say which extra to install."""
        import warnings

        try:
            import dlib

            with (
                warnings.catch_warnings()
            ):  # its pkg_resources import warns on every start; not the user's concern
                warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
                import face_recognition_models as models
        except ImportError as exc:  # face_recognition_models also needs pkg_resources (setuptools < 81)
            raise MissingDependency(f"dlib / face_recognition_models ({exc})", "faces") from exc
        return dlib, models

    def detect(self, image: Image.Image, rgb: np.ndarray) -> list[tuple[Any, float]]:
        """HOG face boxes (dlib rectangles in `rgb`'s full-size pixels) with their scores: first on a copy at
        most `detect_max_side` long without upsampling, then — only if that finds nothing — at up to twice
        that size with `max_upsample` upsamples. `rgb` is `image` as an (H, W, 3) uint8 array."""
        height, width = rgb.shape[:2]
        for max_side, upsample in ((self.detect_max_side, 0), (2 * self.detect_max_side, self.max_upsample)):
            scale = min(1.0, max_side / max(width, height))
            small = rgb if scale == 1.0 else self._resized(image, scale)
            rects, scores, _ = self._detector.run(small, upsample, 0.0)
            if len(rects):
                break
        boxes = []
        for rect, score in zip(rects, scores, strict=True):
            full = self._dlib.rectangle(
                max(0, round(rect.left() / scale)),
                max(0, round(rect.top() / scale)),
                min(width, round(rect.right() / scale)),
                min(height, round(rect.bottom() / scale)),
            )
            boxes.append((full, float(score)))
        return boxes

    def landmarks(self, rgb: np.ndarray, box: Any) -> tuple[list[tuple[float, float]], Any]:
        """The 68 landmark points (x, y pixels) and the 5-point shape the embedding aligns with."""
        points = [(float(p.x), float(p.y)) for p in self._pose68(rgb, box).parts()]
        return points, self._pose5(rgb, box)

    def embed(self, rgb: np.ndarray, shape5: Any) -> list[float]:
        """The 128-d descriptor (face_recognition.face_encodings' alignment, no jitter), rounded to 6 places:
        dlib cuts the 150×150 chip exactly as `compute_face_descriptor` does, numpy runs the network."""
        chip = np.asarray(self._dlib.get_face_chip(rgb, shape5, size=CHIP_SIZE, padding=CHIP_PADDING))
        return [round(float(v), 6) for v in self._encoder.descriptor(chip)]

    def analyze(self, image: Image.Image) -> list[Face]:
        rgb = np.ascontiguousarray(np.asarray(image.convert("RGB")))
        faces = []
        for box, score in self.detect(image, rgb):
            points, shape5 = self.landmarks(rgb, box)
            faces.append(
                Face(
                    box=(box.left(), box.top(), box.right(), box.bottom()),
                    landmarks=points,
                    embedding=self.embed(rgb, shape5),
                    yaw=estimate_yaw(points),
                    detector_score=score,
                )
            )
        faces.sort(key=lambda face: face.area, reverse=True)
        return faces
