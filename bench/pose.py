"""Pose tagging (MediaPipe Pose) beside face analysis (dlib) on the same real photos, in one process.

    .venv/bin/python bench/pose.py [PHOTO_DIR ...]

Default photos: tests/fixtures/poses (people in known poses, CC0) and ../shared/faces (identities, single,
non_face). Each photo is decoded once; both analysers are loaded before timing (their load times are printed
apart) and then run on every photo, one after the other, three rounds, taking each photo's fastest round for
each analyser. Printed, and written to bench/results/pose.md: photos, images/s and ms per image (wall and
CPU time of this process) for each, and the ratio face / pose.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from PIL import Image
from rich.console import Console
from rich.table import Table

from results import save_table  # bench/results.py: run as a script, bench/ is on the path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DIRS = [REPO / "tests" / "fixtures" / "poses", REPO.parent / "shared" / "faces"]
ROUNDS = 3


def photos(folders: list[Path]) -> list[Image.Image]:
    found = sorted(p for folder in folders for p in folder.rglob("*.jpg"))
    if not found:
        raise SystemExit(f"no .jpg photos under {', '.join(map(str, folders))}")
    return [Image.open(p).convert("RGB") for p in found]


def timed(run, images: list[Image.Image]) -> tuple[float, float]:
    """(wall, cpu) seconds over all images, each image's fastest of ROUNDS runs."""
    best_wall = [float("inf")] * len(images)
    best_cpu = [float("inf")] * len(images)
    for _ in range(ROUNDS):
        for index, image in enumerate(images):
            wall, cpu = time.perf_counter(), time.process_time()
            run(image)
            best_wall[index] = min(best_wall[index], time.perf_counter() - wall)
            best_cpu[index] = min(best_cpu[index], time.process_time() - cpu)
    return sum(best_wall), sum(best_cpu)


def main() -> None:
    from flenwheel.faces.dlib_backend import DlibFaceAnalyzer
    from flenwheel.poses.mediapipe_backend import MediaPipePoseAnalyzer

    folders = [Path(arg) for arg in sys.argv[1:]] or DEFAULT_DIRS
    images = photos(folders)
    started = time.perf_counter()
    face = DlibFaceAnalyzer()
    face_load = time.perf_counter() - started
    started = time.perf_counter()
    pose = MediaPipePoseAnalyzer()
    pose_load = time.perf_counter() - started
    people = sum(pose.analyze(image) is not None for image in images)
    faces = sum(bool(face.analyze(image)) for image in images)

    face_wall, face_cpu = timed(face.analyze, images)
    pose_wall, pose_cpu = timed(pose.analyze, images)
    n = len(images)
    table = Table(
        "analysis", "photos", "found in", "images/s", "ms/image (wall)", "ms/image (CPU)", "load s",
        title=f"Pose tagging beside face analysis — {n} photos, best of {ROUNDS} rounds each",
    )  # fmt: skip
    table.add_row(
        "faces (dlib HOG + 68 points + embedding)", str(n), f"{faces} (a face)", f"{n / face_wall:.1f}",
        f"{1000 * face_wall / n:.0f}", f"{1000 * face_cpu / n:.0f}", f"{face_load:.1f}",
    )  # fmt: skip
    table.add_row(
        "pose (MediaPipe Pose full, 33 landmarks + tags)", str(n), f"{people} (a person)",
        f"{n / pose_wall:.1f}", f"{1000 * pose_wall / n:.0f}", f"{1000 * pose_cpu / n:.0f}", f"{pose_load:.1f}",
    )  # fmt: skip
    table.add_row("ratio face / pose", "", "", f"{face_wall / pose_wall:.2f}× time", "", "", "")
    Console().print(table)
    save_table(
        "pose",
        table,
        notes=[
            "Same decoded photos for both; MediaPipe uses its own threads (XNNPACK), dlib one core.",
            "Photos: " + ", ".join(str(f) for f in folders),
        ],
    )


if __name__ == "__main__":
    main()
