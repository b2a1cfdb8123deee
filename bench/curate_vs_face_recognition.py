"""Curate ≥ 80 photos with flenwheel and with the `face_recognition` command-line tool; compare.

    .venv/bin/python bench/curate_vs_face_recognition.py [FACES_DIR]

Both tools get the same flat folder of every photo in ../shared/faces (identities, single, non_face) and the
same reference photo of the character (lisa/1.jpg). Both run as command-line programs from a cold start, so
model loading counts for both. face_recognition is run with its default (--cpus 1) and with both cores.
The table prints wall time, images per second and the ratio, then whether both agree on who is the character.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

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


def run(command: list[str], **kwargs) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=True, **kwargs)
    return time.perf_counter() - start, result.stdout


def main() -> None:
    faces = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_FACES
    work = Path(tempfile.mkdtemp(prefix="flenwheel-bench-"))
    photos = gather(faces, work / "photos")
    known = work / "known"
    known.mkdir()
    reference = work / "photos" / "identities_lisa_1.jpg"
    shutil.copy(reference, known / "lisa.jpg")
    character = {p.name for p in photos if p.name.startswith("identities_lisa_")}

    # face_recognition CLI: one line per face, "file,name,distance"; a match is distance <= tolerance.
    peer_rows = []
    for cpus in (1, 2):
        seconds, out = run(
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
        peer_rows.append((f"face_recognition CLI (--cpus {cpus})", seconds))
    peer_matches = {
        Path(line.split(",")[0]).name
        for line in out.splitlines()
        if line.count(",") == 2 and line.split(",")[1] == "lisa"
    }

    env = {
        **os.environ,
        "FLENWHEEL_PROJECT": str(work / "project"),
        "FLENWHEEL_IDENTITY_THRESHOLD": str(THRESHOLD),
    }
    flw = str(BIN / "flenwheel")
    run([flw, "init", str(work / "project")], env=env)
    run([flw, "character", "create", "lisa", "--token", "ohwx", "--class", "woman"], env=env)
    start = time.perf_counter()
    run([flw, "ingest", "lisa", str(reference), "--reference", "--json"], env=env)
    run([flw, "ingest", "lisa", str(work / "photos"), "--json"], env=env)
    _, out = run([flw, "curate", "lisa", "--json"], env=env)
    cold = time.perf_counter() - start
    cached, _ = run([flw, "curate", "lisa", "--json"], env=env)
    report = json.loads(out)
    ours = {Path(d["file"]).name for d in report["decisions"] if d["label"] == "good"}

    n = len(photos)
    table = Table(
        "tool", "wall s", "images/s", "flenwheel speed-up", title=f"Curating {n} photos (character: lisa)"
    )
    for name, seconds in peer_rows:
        table.add_row(name, f"{seconds:.2f}", f"{n / seconds:.1f}", f"{seconds / cold:.2f}×")
    table.add_row("flenwheel ingest + curate (cold)", f"{cold:.2f}", f"{n / cold:.1f}", "1.00×")
    table.add_row(
        "flenwheel curate again (cached)",
        f"{cached:.2f}",
        f"{n / cached:.1f}",
        f"{cold / cached:.2f}× vs cold",
    )
    console = Console()
    console.print(table)
    agree = ours == peer_matches
    console.print(
        f"character photos: {len(character)}; face_recognition matched {len(peer_matches)}, flenwheel kept "
        f"{len(ours)}; {'they agree on every photo' if agree else 'they DISAGREE'}"
        + (
            ""
            if agree
            else f": only face_recognition {sorted(peer_matches - ours)}, only flenwheel {sorted(ours - peer_matches)}"
        )
    )
    console.print(
        f"(both missed or found exactly the {len(character)} lisa photos: {ours == character == peer_matches})"
    )
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
