"""Calibrate the identity threshold on ../shared/faces (or any folder with one sub-folder per person).

    .venv/bin/python bench/calibrate_identity.py [FACES_DIR]

Prints false-accept / false-reject rates by threshold, for photo pairs and for the gate as curate applies it,
and the accuracy of the neutral/smiling expression rule on photos named neutral.jpg / smiling.jpg.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from flenwheel.config import Settings
from flenwheel.domain import Expression
from flenwheel.faces.calibration import gate_distances, pair_distances
from flenwheel.faces.dlib_backend import DlibFaceAnalyzer
from flenwheel.faces.geometry import expression_of

DEFAULT_FACES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "faces" / "identities"
THRESHOLDS = [0.40, 0.45, 0.48, 0.50, 0.52, 0.55, 0.60]


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_FACES
    analyzer = DlibFaceAnalyzer(detect_max_side=Settings().detect_max_side)
    people: dict[str, list[np.ndarray]] = {}
    expressions = {"right": 0, "total": 0}
    for photo in sorted(root.glob("*/*")):
        faces = analyzer.analyze(Image.open(photo).convert("RGB"))
        if not faces:
            print(f"no face: {photo}")
            continue
        people.setdefault(photo.parent.name, []).append(np.asarray(faces[0].embedding))
        if photo.stem in {"neutral", "smiling"}:
            expressions["total"] += 1
            expressions["right"] += expression_of(faces[0]) == Expression(photo.stem)
    console = Console()
    configured = Settings().identity_threshold
    for title, distances in (
        ("photo pairs", pair_distances(people)),
        ("gate (median to references)", gate_distances(people)),
    ):
        table = Table(
            "threshold", "false accepts", "FAR", "false rejects", "FRR", title=f"Identity — {title}"
        )
        for threshold in THRESHOLDS:
            r = distances.rates(threshold)
            mark = (
                " ← flenwheel"
                if threshold == configured
                else (" ← face_recognition default" if threshold == 0.6 else "")
            )
            table.add_row(
                f"{threshold:.2f}{mark}",
                f"{r.false_accepts}/{r.impostor_trials}",
                f"{r.far:.2%}",
                f"{r.false_rejects}/{r.genuine_trials}",
                f"{r.frr:.2%}",
            )
        console.print(table)
        console.print(
            f"genuine max {max(distances.genuine):.3f}, impostor min {min(distances.impostor):.3f} "
            f"({len(people)} people, {sum(len(v) for v in people.values())} photos)"
        )
    if expressions["total"]:
        console.print(
            f"expression rule: {expressions['right']}/{expressions['total']} neutral/smiling photos right"
        )


if __name__ == "__main__":
    main()
