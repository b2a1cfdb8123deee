"""Curate ≥ 80 photos with flenwheel and with the `face_recognition` command-line tool; compare.

    .venv/bin/python bench/curate_vs_face_recognition.py [FACES_DIR]

Both tools get the same flat folder of every photo in ../shared/faces (identities, single, non_face) and the
same reference photo of the character (lisa/1.jpg). Both run as command-line programs from a cold start, so
model loading counts for both. face_recognition is run with its default (--cpus 1) and with both cores;
flenwheel with its default (every core).

Printed, and written to bench/results/curate_vs_face_recognition.md:
- per tool: wall seconds, CPU seconds (user + system of the tool's processes, from getrusage: the work done,
  which a busy machine does not inflate the way it inflates wall time), images/s, and the speed-up both ways;
- per stage of flenwheel's analysis, measured in this process on the same photos (CPU ms per image):
  decode, HOG detection (with the upsampled second look where the first finds nothing), landmarks (68 + 5
  points), the 128-d ResNet embedding (dlib's network run with numpy; dlib's own code on the same faces beside
  it), quality metrics, body pose — and the floor: decode + detect + landmarks + embed, the least work a
  curate with these models does per image on this machine;
- whether both tools agree on which photos show the character ("decisions agree").
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from results import save_table  # bench/results.py: run as a script, bench/ is on the path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FACES = REPO.parent / "shared" / "faces"
BIN = Path(sys.executable).parent
THRESHOLD = 0.48  # flenwheel's calibrated identity threshold, given to both tools


def gather(faces: Path, into: Path) -> list[Path]:
    """Copy every photo into one flat folder with unique names (the CLI does not recurse)."""
    into.mkdir()
    photos = []
    for photo in sorted(faces.rglob("*.jpg")):
        target = into / "_".join(photo.relative_to(faces).parts)
        shutil.copy(photo, target)
        photos.append(target)
    return photos


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Timed:
    """Wall and CPU seconds of the commands run through it (CPU: every finished child process, pool workers
    included, since each command waits for its own)."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def run(self, command: list[str], **kwargs: object) -> str:
        start, cpu = time.perf_counter(), _children_cpu()
        result = subprocess.run(command, capture_output=True, text=True, check=True, **kwargs)  # type: ignore[call-overload]
        self.wall += time.perf_counter() - start
        self.cpu += _children_cpu() - cpu
        return result.stdout


def stage_times(photos: list[Path]) -> tuple[dict[str, float], int]:
    """CPU seconds per stage of flenwheel's analysis over `photos`, one process, as DlibFaceAnalyzer does it."""
    import numpy as np

    from flenwheel.config import Settings
    from flenwheel.faces.dlib_backend import DlibFaceAnalyzer
    from flenwheel.images import open_stored
    from flenwheel.poses.mediapipe_backend import shared_pose_analyzer
    from flenwheel.quality import measure_quality

    analyzer = DlibFaceAnalyzer(detect_max_side=Settings().detect_max_side)
    dlib_encoder = analyzer._dlib.face_recognition_model_v1(
        analyzer.load_modules()[1].face_recognition_model_location()
    )
    poses = shared_pose_analyzer()
    clock = time.process_time
    stages = ("decode", "detect", "landmarks", "embed", "quality", "body pose", "embed by dlib's own code")
    spent = dict.fromkeys(stages, 0.0)
    faces = 0
    for photo in photos:
        t = clock()
        image = open_stored(photo.read_bytes())
        rgb = np.ascontiguousarray(np.asarray(image.convert("RGB")))
        spent["decode"] += clock() - t
        t = clock()
        boxes = analyzer.detect(image, rgb)
        spent["detect"] += clock() - t
        for box, _ in boxes:
            t = clock()
            shape5 = analyzer.landmarks(rgb, box)[1]
            spent["landmarks"] += clock() - t
            t = clock()
            analyzer.embed(rgb, shape5)
            spent["embed"] += clock() - t
            t = clock()
            dlib_encoder.compute_face_descriptor(rgb, shape5, 1)  # what face_recognition runs
            spent["embed by dlib's own code"] += clock() - t
            faces += 1
        t = clock()
        measure_quality(image, [(b.left(), b.top(), b.right(), b.bottom()) for b, _ in boxes])
        spent["quality"] += clock() - t
        t = clock()
        poses.analyze(image)
        spent["body pose"] += clock() - t
    return spent, faces


def main() -> None:
    faces = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_FACES
    work = Path(tempfile.mkdtemp(prefix="flenwheel-bench-"))
    photos = gather(faces, work / "photos")
    known = work / "known"
    known.mkdir()
    reference = work / "photos" / "identities_lisa_1.jpg"
    shutil.copy(reference, known / "lisa.jpg")
    character = {p.name for p in photos if p.name.startswith("identities_lisa_")}
    load_before = os.getloadavg()

    # face_recognition CLI: one line per face, "file,name,distance"; a match is distance <= tolerance.
    peers: list[tuple[str, Timed]] = []
    outputs: dict[int, str] = {}
    for cpus in (1, 2):
        timed = Timed()
        outputs[cpus] = timed.run(
            [
                str(BIN / "face_recognition"),
                "--cpus",
                str(cpus),
                "--tolerance",
                str(THRESHOLD),
                "--show-distance",
                "true",
                str(known),
                str(work / "photos"),
            ]
        )
        peers.append((f"face_recognition CLI (--cpus {cpus})", timed))
    # Its decisions are read from the one-process run: with --cpus 2 its workers print to one pipe, and a
    # line can come out torn (seen once: a match missing from the parsed output).
    peer_matches = {
        Path(line.split(",")[0]).name
        for line in outputs[1].splitlines()
        if line.count(",") == 2 and line.split(",")[1] == "lisa"
    }

    env = {
        **os.environ,
        "FLENWHEEL_PROJECT": str(work / "project"),
        "FLENWHEEL_IDENTITY_THRESHOLD": str(THRESHOLD),
    }
    flw = str(BIN / "flenwheel")
    setup = Timed()
    setup.run([flw, "init", str(work / "project")], env=env)
    setup.run([flw, "character", "create", "lisa", "--token", "ohwx", "--class", "woman"], env=env)
    cold = Timed()
    cold.run([flw, "ingest", "lisa", str(reference), "--reference", "--json"], env=env)
    cold.run([flw, "ingest", "lisa", str(work / "photos"), "--json"], env=env)
    report = json.loads(cold.run([flw, "curate", "lisa", "--json"], env=env))
    cached = Timed()
    cached.run([flw, "curate", "lisa", "--json"], env=env)
    ours = {Path(d["file"]).name for d in report["decisions"] if d["label"] == "good"}
    spent, face_count = stage_times(photos)
    load_after = os.getloadavg()

    n = len(photos)
    table = Table(title=f"Curating {n} photos (character: lisa), cold start, models loaded by each tool")
    for column in ("tool", "wall s", "CPU s", "images/s (wall)", "speed-up (wall)", "speed-up (CPU)"):
        table.add_column(column, justify="left" if column == "tool" else "right")
    for name, timed in peers:
        counted = "--cpus 1" in name  # --cpus 2 works in forkserver processes that getrusage never sees
        table.add_row(
            name,
            f"{timed.wall:.2f}",
            f"{timed.cpu:.2f}" if counted else "not counted",
            f"{n / timed.wall:.1f}",
            f"{timed.wall / cold.wall:.2f}×",
            f"{timed.cpu / cold.cpu:.2f}×" if counted else "—",
        )
    table.add_row(
        "flenwheel ingest + curate (cold)",
        f"{cold.wall:.2f}",
        f"{cold.cpu:.2f}",
        f"{n / cold.wall:.1f}",
        "1.00×",
        "1.00×",
    )
    table.add_row(
        "flenwheel curate again (cached)",
        f"{cached.wall:.2f}",
        f"{cached.cpu:.2f}",
        f"{n / cached.wall:.1f}",
        f"{cold.wall / cached.wall:.2f}× vs cold",
        f"{cold.cpu / cached.cpu:.2f}× vs cold",
    )

    floor = sum(spent[stage] for stage in ("decode", "detect", "landmarks", "embed"))
    stages = Table(title=f"flenwheel's analysis per stage ({n} photos, {face_count} faces; CPU, one process)")
    for column in ("stage", "CPU s", "ms / image", "share"):
        stages.add_column(column, justify="left" if column == "stage" else "right")
    dlib_embed = spent.pop("embed by dlib's own code")
    total = sum(spent.values())
    for stage, seconds in spent.items():
        stages.add_row(stage, f"{seconds:.2f}", f"{1000 * seconds / n:.1f}", f"{seconds / total:.0%}")
    stages.add_row("all stages", f"{total:.2f}", f"{1000 * total / n:.1f}", "100%")
    stages.add_row(
        "(embed by dlib's own code, as before: not run by flenwheel)",
        f"{dlib_embed:.2f}",
        f"{1000 * dlib_embed / n:.1f}",
        "",
    )
    stages.add_row(
        "floor: decode + detect + landmarks + embed", f"{floor:.2f}", f"{1000 * floor / n:.1f}", ""
    )

    console = Console(width=140)
    console.print(table)
    console.print(stages)
    agree = ours == peer_matches
    notes = [
        f"character photos: {len(character)}; face_recognition matched {len(peer_matches)}, flenwheel kept "
        f"{len(ours)}; decisions agree: {'yes, on every photo' if agree else 'NO'}"
        + (
            ""
            if agree
            else f" (only face_recognition: {sorted(peer_matches - ours)}, only flenwheel: {sorted(ours - peer_matches)})"
        ),
        f"both found exactly the {len(character)} lisa photos: {ours == character == peer_matches}",
        f"flenwheel cold CPU per image: {1000 * cold.cpu / n:.0f} ms, against a floor of {1000 * floor / n:.0f} ms "
        f"(the face stages alone; {cold.cpu / floor:.2f}× the floor — the rest is quality metrics, body pose, "
        "three process start-ups, ingest's normalising and the database)",
        f"the floor if the embedding ran on dlib's own code: {1000 * (floor - spent['embed'] + dlib_embed) / n:.0f} ms "
        "per image",
        f"face_recognition CLI --cpus 1 CPU per image: {1000 * peers[0][1].cpu / n:.0f} ms",
        f"load average before / after: {load_before[0]:.1f} / {load_after[0]:.1f} (1 min); wall times on a "
        "loaded machine are inflated, CPU seconds much less so",
    ]
    for note in notes:
        console.print(note)
    console.print(f"written: {save_table('curate_vs_face_recognition', [table, stages], notes)}")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
