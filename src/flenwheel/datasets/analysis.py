"""Analyse assets once (quality + faces + head angle/shot/expression + body pose), in parallel processes, and
cache the result."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from PIL import Image

from flenwheel.domain import AssetAnalysis
from flenwheel.faces.base import FaceAnalyzer
from flenwheel.faces.geometry import angle_bucket, shot_type, sure_expression
from flenwheel.images import open_stored
from flenwheel.poses.base import PoseAnalyzer
from flenwheel.quality import measure_quality

_worker_analyzer: FaceAnalyzer | None = None


def analyze_image(
    image: Image.Image, analyzer: FaceAnalyzer, pose_analyzer: PoseAnalyzer | None = None
) -> AssetAnalysis:
    """Everything curate needs from one decoded image; the body pose too when `pose_analyzer` is given."""
    faces = analyzer.analyze(image)
    main = faces[0] if faces else None
    return AssetAnalysis(
        analyzer=analyzer.id,
        quality=measure_quality(image, [face.box for face in faces]),
        faces=faces,
        angle=angle_bucket(main.yaw) if main else None,
        shot=shot_type(main, image.height) if main else None,
        expression=sure_expression(main) if main else None,
        pose_analyzer=pose_analyzer.id if pose_analyzer else None,
        body=pose_analyzer.analyze(image) if pose_analyzer else None,
    )


def with_pose(analysis: AssetAnalysis, image: Image.Image, pose_analyzer: PoseAnalyzer) -> AssetAnalysis:
    """`analysis` with the body pose measured on `image` (for analyses cached before pose was measured)."""
    return analysis.model_copy(
        update={"pose_analyzer": pose_analyzer.id, "body": pose_analyzer.analyze(image)}
    )


def _init_worker(detect_max_side: int) -> None:
    """The process's analyzer: loaded once (≈1.2 s of CPU for the three dlib models), then kept. Pool workers
    are forked after the parent has loaded it, so they inherit the models instead of loading them again."""
    global _worker_analyzer
    from flenwheel.faces.dlib_backend import DlibFaceAnalyzer

    if _worker_analyzer is None or getattr(_worker_analyzer, "detect_max_side", None) != detect_max_side:
        _worker_analyzer = DlibFaceAnalyzer(detect_max_side=detect_max_side)


def _analyze_file(job: tuple[int, str]) -> tuple[int, AssetAnalysis]:
    asset_id, path = job
    assert _worker_analyzer is not None
    return asset_id, analyze_image(open_stored(Path(path).read_bytes()), _worker_analyzer)


def analyze_files(
    jobs: list[tuple[int, Path]],
    detect_max_side: int,
    workers: int,
    on_result: Callable[[int, AssetAnalysis], None],
) -> None:
    """Analyse (asset_id, blob path) pairs; `on_result` runs in this process as each one finishes.

    Faces are found in worker processes; the body pose in this process, as each face analysis comes back
    (a MediaPipe graph does not survive a fork: a worker forked from a process that had one dies)."""
    if not jobs:
        return
    from flenwheel.faces.dlib_backend import DlibFaceAnalyzer
    from flenwheel.poses.mediapipe_backend import shared_pose_analyzer

    DlibFaceAnalyzer.load_modules()  # fail here with a clear message, not as a broken worker pool
    pose_analyzer = shared_pose_analyzer()
    paths = {asset_id: path for asset_id, path in jobs}

    def finish(asset_id: int, analysis: AssetAnalysis) -> None:
        image = open_stored(Path(paths[asset_id]).read_bytes())
        on_result(asset_id, with_pose(analysis, image, pose_analyzer))

    count = workers or os.cpu_count() or 1
    count = max(1, min(count, len(jobs)))
    payload = [(asset_id, str(path)) for asset_id, path in jobs]
    _init_worker(detect_max_side)
    if count == 1:
        for job in payload:
            finish(*_analyze_file(job))
        return
    # fork: workers inherit the imported modules and the loaded models (copy-on-write), loading nothing.
    with ProcessPoolExecutor(
        max_workers=count,
        mp_context=get_context("fork"),
        initializer=_init_worker,
        initargs=(detect_max_side,),
    ) as pool:
        for asset_id, analysis in pool.map(_analyze_file, payload, chunksize=1):
            finish(asset_id, analysis)
