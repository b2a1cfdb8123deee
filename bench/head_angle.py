"""Head yaw from dlib's 68 points (flenwheel's estimate_yaw) beside MediaPipe's face mesh, on the same photos.

    .venv/bin/python bench/head_angle.py [FACES_DIR]

The photos with a known angle here are the Face Research Lab London Set (../shared/faces/identities/
london_*): 40 people photographed straight on, neutral and smiling — true yaw ≈ 0°. Each photo and its mirror
image are measured: a steady estimator gives |yaw| near 0 on them and yaw(mirror) = −yaw(photo). Printed, and
written to bench/results/head_angle.md, for each estimator: photos measured, mean |yaw|, the 90th percentile
of |yaw|, the share bucketed "front" (< 15°, faces/geometry.py), and the mean mirror error |yaw + yaw(mirror)|.

dlib: yaw = asin(2 · (nose tip x − jaw midpoint x) / jaw width) from points 30, 0, 16 (faces/geometry.py).
Face mesh: yaw = atan2(Δz, Δx) between the cheek points 234 and 454 of MediaPipe's 468-point mesh (its z is in
the same scale as x), the head's turn in 3D, not a projection ratio.
"""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from rich.console import Console
from rich.table import Table

from results import save_table  # bench/results.py: run as a script, bench/ is on the path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FACES = REPO.parent / "shared" / "faces"


def mesh_yaw(mesh: object, image: Image.Image) -> float | None:
    result = mesh.process(np.asarray(image.convert("RGB")))  # type: ignore[attr-defined]
    if not result.multi_face_landmarks:
        return None
    marks = result.multi_face_landmarks[0].landmark
    left, right = marks[234], marks[454]  # the person's right and left cheek edge (image left, right)
    dx = (right.x - left.x) * image.width
    dz = (right.z - left.z) * image.width
    return math.degrees(math.atan2(dz, dx))


def main() -> None:
    from mediapipe.python.solutions import face_mesh

    from flenwheel.faces.dlib_backend import DlibFaceAnalyzer

    faces = Path(sys.argv[1]) if sys.argv[1:] else DEFAULT_FACES
    photos = sorted((faces / "identities").glob("london_*/*.jpg"))
    if not photos:
        raise SystemExit(f"no London Set photos under {faces}/identities")
    dlib = DlibFaceAnalyzer()
    mesh = face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1)

    def dlib_yaw(image: Image.Image) -> float | None:
        found = dlib.analyze(image)
        return found[0].yaw if found else None

    table = Table(
        "estimator", "photos", "mean |yaw|", "90th pct |yaw|", "front (< 15°)", "mirror error",
        title=f"Head yaw on {len(photos)} frontal photos (London Set) and their mirror images",
    )  # fmt: skip
    summary = {}
    for name, estimate in (
        ("dlib 68 points", dlib_yaw),
        ("MediaPipe face mesh", lambda i: mesh_yaw(mesh, i)),
    ):
        yaws, errors = [], []
        for photo in photos:
            image = Image.open(photo).convert("RGB")
            yaw, mirrored = estimate(image), estimate(ImageOps.mirror(image))
            if yaw is None or mirrored is None:
                continue
            yaws.append(abs(yaw))
            errors.append(abs(yaw + mirrored))
        p90 = float(np.percentile(yaws, 90)) if yaws else float("nan")
        front = sum(y < 15 for y in yaws) / len(yaws) if yaws else 0.0
        summary[name] = statistics.fmean(yaws)
        table.add_row(
            name, str(len(yaws)), f"{statistics.fmean(yaws):.1f}°", f"{p90:.1f}°", f"{front:.0%}",
            f"{statistics.fmean(errors):.1f}°",
        )  # fmt: skip
    dlib_mean, mesh_mean = summary["dlib 68 points"], summary["MediaPipe face mesh"]
    table.add_row("ratio dlib / mesh", "", f"{dlib_mean / mesh_mean:.2f}", "", "", "")
    Console().print(table)
    save_table("head_angle", table, notes=[f"Photos: {faces}/identities/london_*"])


if __name__ == "__main__":
    main()
