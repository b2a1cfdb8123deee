"""dlib face analysis with the face_recognition models (weights ship on PyPI in face_recognition_models).

Detection runs on a copy at most `detect_max_side` pixels long, first without upsampling (finds faces of
~80 px and up, four times cheaper), then with one upsample only when nothing was found (faces down to ~40
px). Landmarks and the 128-d embedding are computed on the full image so small faces keep their detail. The embedding uses the 5-point alignment exactly as
face_recognition.face_encodings does, so distances match that library's (and its 0.6 convention).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from flenwheel.domain import Face
from flenwheel.errors import MissingDependency
from flenwheel.faces.geometry import estimate_yaw


class DlibFaceAnalyzer:
    """HOG detector + 68/5-point shape predictors + ResNet embedding, loaded once per process."""

    id = "dlib-hog-v1"

    def __init__(self, detect_max_side: int = 640, max_upsample: int = 1) -> None:
        try:
            import dlib
            import face_recognition_models as models
        except ImportError as exc:
            raise MissingDependency("dlib / face_recognition_models", "faces") from exc
        self._dlib: Any = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._pose68 = dlib.shape_predictor(models.pose_predictor_model_location())
        self._pose5 = dlib.shape_predictor(models.pose_predictor_five_point_model_location())
        self._encoder = dlib.face_recognition_model_v1(models.face_recognition_model_location())
        self.detect_max_side = detect_max_side
        self.max_upsample = max_upsample

    def analyze(self, image: Image.Image) -> list[Face]:
        rgb = np.ascontiguousarray(np.asarray(image.convert("RGB")))
        height, width = rgb.shape[:2]
        scale = min(1.0, self.detect_max_side / max(width, height))
        if scale < 1.0:
            small_image = image.resize(
                (round(width * scale), round(height * scale)), Image.Resampling.BILINEAR
            )
            small = np.ascontiguousarray(np.asarray(small_image.convert("RGB")))
        else:
            small = rgb
        for upsample in range(self.max_upsample + 1):
            rects, scores, _ = self._detector.run(small, upsample, 0.0)
            if len(rects):
                break
        faces = []
        for rect, score in zip(rects, scores, strict=True):
            left = max(0, round(rect.left() / scale))
            top = max(0, round(rect.top() / scale))
            right = min(width, round(rect.right() / scale))
            bottom = min(height, round(rect.bottom() / scale))
            full = self._dlib.rectangle(left, top, right, bottom)
            shape68 = self._pose68(rgb, full)
            points = [(float(p.x), float(p.y)) for p in shape68.parts()]
            shape5 = self._pose5(rgb, full)
            embedding = np.asarray(self._encoder.compute_face_descriptor(rgb, shape5, 1), dtype=np.float64)
            faces.append(
                Face(
                    box=(left, top, right, bottom),
                    landmarks=points,
                    embedding=[round(float(v), 6) for v in embedding],
                    yaw=estimate_yaw(points),
                    detector_score=float(score),
                )
            )
        faces.sort(key=lambda face: face.area, reverse=True)
        return faces
