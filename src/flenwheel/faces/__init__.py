"""Face analysis: the FaceAnalyzer contract, the dlib backend, head pose and shot type, and the identity gate."""

from flenwheel.faces.base import FaceAnalyzer

__all__ = ["FaceAnalyzer"]
