"""Flywheel 1: the AI filter on a real-photo mix beside seed 001's own recipe, and rounds on the tiny model.

    .venv/bin/python bench/flywheel.py [--rounds 2] [--prompts 2] [--variants 4]

1. The filter (seed 001 step 1.6). Candidates: lisa's four photos the references do not contain, and every
   photo of the 40 other people in ../shared/faces (80); references: lisa/1–4. flenwheel's filter
   (evaluation/candidate_filter.py: the median distance to the references, calibrated threshold 0.48, plus
   quality and near copies) beside the peer the seed names — face_recognition's `compare_faces` with its
   default tolerance 0.6 (a match to any reference keeps the image) — on the same encodings. Printed: the
   share removed (seed target 50–70 %), false negatives (lisa removed) and false accepts (others kept).
2. Rounds on the tiny model with an active tiny LoRA, end to end through `run_flywheel`: seconds per stage
   and cost per round (the tiny model draws no faces: the filter removes every candidate, and the round says
   so; training and evaluation do not run).

Written to bench/results/flywheel.md.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from results import save_table  # bench/results.py: run as a script, bench/ is on the path

REPO = Path(__file__).resolve().parents[1]
FACES = REPO.parent / "shared" / "faces" / "identities"
sys.path.insert(0, str(REPO / "tests"))  # checkpoint_runs: a character with a dataset and a tiny LoRA


def filter_table() -> Table:
    import face_recognition
    from PIL import Image

    from flenwheel.datasets.analysis import analyze_image
    from flenwheel.evaluation.candidate_filter import Candidate, false_negative_rate, filter_candidates
    from flenwheel.evaluation.scoring import ReferenceSet
    from flenwheel.faces.dlib_backend import DlibFaceAnalyzer
    from flenwheel.faces.identity import IdentityReference
    from flenwheel.quality import QualityThresholds

    lisa = sorted((FACES / "lisa").glob("*.jpg"))
    references, genuine = lisa[:4], lisa[4:]
    others = sorted(p for folder in FACES.glob("london_*") for p in folder.glob("*.jpg"))
    analyzer = DlibFaceAnalyzer()
    started = time.perf_counter()
    analyses = {
        p: analyze_image(Image.open(p).convert("RGB"), analyzer) for p in [*references, *genuine, *others]
    }
    analysis_s = time.perf_counter() - started
    embeddings = np.stack([np.asarray(analyses[p].faces[0].embedding) for p in references])
    reference_set = ReferenceSet(
        identity=IdentityReference((1, 2, 3, 4), embeddings, "lisa/1-4"),
        training_hashes=tuple((i, analyses[p].quality.phash) for i, p in enumerate(references, 1)),
        threshold=0.48,
        duplicate_bits=6,
    )
    pool = [*genuine, *others]
    ids = {p: i for i, p in enumerate(pool, start=100)}
    started = time.perf_counter()
    report = filter_candidates(
        [Candidate(asset_id=ids[p], analysis=analyses[p]) for p in pool], reference_set, QualityThresholds()
    )
    ours_s = time.perf_counter() - started
    kept_ours = {v.asset_id for v in report.verdicts if v.kept}
    started = time.perf_counter()
    kept_peer = {
        ids[p]
        for p in pool
        if analyses[p].faces
        and any(
            face_recognition.compare_faces(list(embeddings), np.asarray(analyses[p].faces[0].embedding), 0.6)
        )
    }
    peer_s = time.perf_counter() - started
    genuine_ids = {ids[p] for p in genuine}
    other_ids = {ids[p] for p in others}
    table = Table(
        "filter", "candidates", "removed", "false negatives (lisa removed)", "false accepts (others kept)",
        "decision ms / image", title=f"AI filter on {len(pool)} real photos ({len(genuine)} of the character)",
    )  # fmt: skip
    fnr = false_negative_rate(report, genuine_ids) or 0.0
    for name, kept, seconds in (
        ("flenwheel (median distance ≤ 0.48, quality, near copy)", kept_ours, ours_s),
        ("face_recognition.compare_faces, tolerance 0.6 (seed 001)", kept_peer, peer_s),
    ):
        removed = 1 - len(kept) / len(pool)
        lost = len(genuine_ids - kept) / len(genuine_ids)
        accepted = len(other_ids & kept)
        table.add_row(
            name,
            str(len(pool)),
            f"{removed:.0%}",
            f"{lost:.0%}",
            str(accepted),
            f"{1000 * seconds / len(pool):.3f}",
        )
    table.caption = (
        f"shared face analysis (dlib HOG + embedding) {1000 * analysis_s / len(analyses):.0f} ms/image; "
        f"flenwheel false-negative rate {fnr:.0%}"
    )
    return table


def rounds_table(rounds: int, prompts: int, variants: int) -> Table:
    from flenwheel.config import load_settings
    from flenwheel.pipeline.activation import activate
    from flenwheel.pipeline.flywheel import FlywheelOptions, run_flywheel
    from flenwheel.store.project import Project

    from checkpoint_runs import add_run, character_with_dataset, tiny_lora_file

    with tempfile.TemporaryDirectory() as tmp:
        project = Project.init(load_settings(project=Path(tmp) / "p"))
        character_with_dataset(project)
        lora = tiny_lora_file(Path(tmp) / "lora.safetensors", seed=5)
        spec = {"base_model": "tiny", "resolution": 64, "rank": 4, "epochs": 1, "repeats": 1}
        _run, (checkpoint,) = add_run(project, "lisa", [("tiny", lora)], spec=spec)
        activate(project, "lisa", checkpoint, 1.0)
        marks: list[tuple[float, str]] = []
        started = time.perf_counter()
        outcome = run_flywheel(
            project,
            "lisa",
            FlywheelOptions(rounds=rounds, prompts=prompts, variants=variants),
            on_stage=lambda message: marks.append((time.perf_counter(), message)),
        )
        total = time.perf_counter() - started
        project.close()
    marks.append((started + total, "end"))
    table = Table("round: stage", "seconds", title=f"{rounds} flywheel round(s) on the tiny model")
    for (at, message), (after, _next) in itertools.pairwise(marks):
        table.add_row(message, f"{after - at:.1f}")
    for item in outcome.rounds:
        record = item.record
        table.add_row(
            f"round {item.number}: cost ${record.get('generation_cost_usd', 0):.2f}, "
            f"{len(record.get('candidates', []))} candidates, removed {record['filter']['removed_by']}",
            "",
        )
    table.caption = f"total {total:.1f} s (report included); stopped: {outcome.stopped_because}"
    return table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--variants", type=int, default=4)
    args = parser.parse_args()
    console = Console()
    tables = [filter_table(), rounds_table(args.rounds, args.prompts, args.variants)]
    for table in tables:
        console.print(table)
    save_table("flywheel", tables, notes=[str(table.caption) for table in tables])


if __name__ == "__main__":
    main()
