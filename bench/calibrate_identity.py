"""Calibrate the identity gate: false-accept and false-reject rates, with 95 % Wilson intervals, of the gate
curate runs (datasets.gate.run_gates), at its strict and loose thresholds, on identities held out.

    .venv/bin/python bench/calibrate_identity.py [FACES_DIR] [--cache FILE]

FACES_DIR holds one folder per person (default: tests/fixtures/faces/identities, the copy of
../shared/faces). Each photo is analysed as taken and under seven changes of capture conditions (darker,
brighter, a warm colour cast, greyscale, JPEG quality 25, rotated 12°, the head at a third of the size in a
wider frame): the set varies light, colour, compression, tilt and scale, not age — no licence-clean set of
one person across years is reachable offline (see README "Identity threshold").

For every person (the character) the first photo is the `--reference`; the character's other photos (every
version) are the genuine trials, every version of every other person's photos the impostor trials. Two
batches: "alone" (each impostor photo curated with the character's photos only: nobody else to weigh it
against) and "crowd" (all the other people present at once, so the open-set rule can weigh each face against
the nearest other person). Identities are split by number: the odd-numbered London people tuned the
thresholds, the even-numbered ones and Lisa are held out; rates are printed for both.

Also prints the expression tag's accuracy on photos named neutral.* / smiling.*.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps
from rich.console import Console
from rich.table import Table

from flenwheel.config import Settings
from flenwheel.datasets.analysis import analyze_image
from flenwheel.datasets.gate import GateInput, run_gates
from flenwheel.domain import AssetAnalysis, Expression, Face, ReviewLabel
from flenwheel.faces.calibration import wilson_interval
from flenwheel.faces.dlib_backend import DlibFaceAnalyzer
from flenwheel.faces.geometry import expression_confidence, expression_of
from flenwheel.quality import QualityThresholds

DEFAULT_FACES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "faces" / "identities"
DEFAULT_CACHE = Path.home() / ".cache" / "flenwheel" / "calibrate-identity.json"
# Identity only: every face is judged (quality gates off), near-duplicate detection off (the versions of one
# photo are meant to be alike).
NO_QUALITY_GATE = QualityThresholds(
    min_side=0, min_sharpness=0.0, min_brightness=0.0, max_brightness=1.0, max_clipped=1.0
)


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _warm(image: Image.Image) -> Image.Image:
    red, green, blue = image.split()
    return Image.merge(
        "RGB", (red.point(lambda v: min(255, int(v * 1.15))), green, blue.point(lambda v: int(v * 0.75)))
    )


def _wide(image: Image.Image) -> Image.Image:
    canvas = Image.new("RGB", (image.width * 3, image.height * 3), (96, 104, 112))
    canvas.paste(image, (image.width, image.height // 2))
    return canvas.resize((image.width * 3 // 2, image.height * 3 // 2), Image.Resampling.LANCZOS)


CONDITIONS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "as taken": lambda image: image,
    "darker": lambda image: ImageEnhance.Brightness(image).enhance(0.5),
    "brighter": lambda image: ImageEnhance.Brightness(image).enhance(1.4),
    "warm cast": _warm,
    "greyscale": lambda image: ImageOps.grayscale(image).convert("RGB"),
    "jpeg 25": lambda image: _jpeg(image, 25),
    "tilted 12°": lambda image: image.rotate(
        12, resample=Image.Resampling.BILINEAR, fillcolor=(120, 120, 120)
    ),
    "wide frame": _wide,
}


@dataclass(frozen=True)
class Photo:
    person: str
    path: Path
    condition: str
    analysis: AssetAnalysis


def analyse_all(root: Path, cache_file: Path) -> list[Photo]:
    """Every photo under every condition, analysed once (cached by file content and condition)."""
    cache: dict[str, dict] = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    analyzer: DlibFaceAnalyzer | None = None
    photos: list[Photo] = []
    for path in sorted(p for p in root.glob("*/*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"}):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        for condition, change in CONDITIONS.items():
            key = f"{digest}:{condition}:{DlibFaceAnalyzer.id}"
            if key not in cache:
                analyzer = analyzer or DlibFaceAnalyzer(detect_max_side=Settings().detect_max_side)
                image = change(Image.open(path).convert("RGB"))
                cache[key] = analyze_image(image, analyzer).model_dump(mode="json")
            analysis = AssetAnalysis.model_validate(cache[key])
            photos.append(Photo(path.parent.name, path, condition, analysis))
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_text(json.dumps(cache))
    return photos


@dataclass
class Tally:
    """Gate outcomes of genuine and impostor trials."""

    genuine: dict[str, int] = field(default_factory=lambda: {"good": 0, "needs_review": 0, "reject": 0})
    impostor: dict[str, int] = field(default_factory=lambda: {"good": 0, "needs_review": 0, "reject": 0})

    def add(self, kind: str, label: ReviewLabel) -> None:
        getattr(self, kind)[label.value] += 1


def _items(photos: Iterable[Photo], start: int, reference: bool = False) -> list[GateInput]:
    return [
        GateInput(start + i, f"{p.person}/{p.path.name}/{p.condition}", p.analysis, reference)
        for i, p in enumerate(photos)
    ]


def run(photos: list[Photo], people: list[str], strict: float, loose: float) -> dict[str, Tally]:
    """Both batches ("alone", "crowd") for every character among `people`."""
    faced = [p for p in photos if p.analysis.faces and p.person in people]
    by_person: dict[str, list[Photo]] = {}
    for photo in faced:
        by_person.setdefault(photo.person, []).append(photo)
    tallies = {"alone": Tally(), "crowd": Tally()}

    def gate(items: list[GateInput]) -> dict[int, ReviewLabel]:
        result = run_gates(items, strict, -1, NO_QUALITY_GATE, loose)
        return {asset_id: s.label for asset_id, s in result.suggestions.items()}

    for person, own in by_person.items():
        first = min(p.path for p in own)
        reference = next(p for p in own if p.path == first and p.condition == "as taken")
        genuine = [p for p in own if p.path != first]
        if not genuine:
            continue
        base = _items([reference], 0, reference=True) + _items(genuine, 1)
        impostors = [p for other, theirs in by_person.items() if other != person for p in theirs]
        crowd = _items(impostors, 10_000)
        labels = gate(base + crowd)
        for item in base[1:]:
            tallies["crowd"].add("genuine", labels[item.asset_id])
        for item in crowd:
            tallies["crowd"].add("impostor", labels[item.asset_id])
        alone_genuine = gate(base)
        for item in base[1:]:
            tallies["alone"].add("genuine", alone_genuine[item.asset_id])
        for item in crowd:
            tallies["alone"].add("impostor", gate([*base, item])[item.asset_id])
    return tallies


def _rate(k: int, n: int) -> str:
    low, high = wilson_interval(k, n)
    return f"{k}/{n} = {k / n:.2%} [{low:.2%}, {high:.2%}]" if n else "—"


def print_rates(console: Console, title: str, tallies: dict[str, Tally], strict: float, loose: float) -> None:
    table = Table(
        "batch",
        f"false accepts (good at ≤ {strict:.2f})",
        f"impostors to review ({strict:.2f}–{loose:.2f})",
        "false rejects at strict (not good)",
        "false rejects at loose (rejected)",
        "precision of good",
        title=f"{title} — rate [95 % Wilson interval]",
    )
    for batch, t in tallies.items():
        genuine_n, impostor_n = sum(t.genuine.values()), sum(t.impostor.values())
        accepted = t.genuine["good"] + t.impostor["good"]
        table.add_row(
            batch,
            _rate(t.impostor["good"], impostor_n),
            _rate(t.impostor["needs_review"], impostor_n),
            _rate(genuine_n - t.genuine["good"], genuine_n),
            _rate(t.genuine["reject"], genuine_n),
            _rate(t.genuine["good"], accepted),
        )
    console.print(table)


# People whose photos show one expression throughout, labelled by looking at them: Lisa's eight are neutral.
LABELLED_BY_EYE = {"lisa": Expression.NEUTRAL}


def _expression_label(photo: Photo) -> Expression | None:
    if photo.path.stem in {"neutral", "smiling"}:
        return Expression(photo.path.stem)
    return LABELLED_BY_EYE.get(photo.person)


def print_expressions(console: Console, photos: list[Photo]) -> None:
    """The smile tag against labels (file names neutral.* / smiling.*, else LABELLED_BY_EYE), photos as
    taken; the confident calls (what captions get) apart."""
    labelled: list[tuple[Expression, Face]] = [
        (label, p.analysis.faces[0])
        for p in photos
        if p.condition == "as taken" and p.analysis.faces and (label := _expression_label(p)) is not None
    ]
    if not labelled:
        return
    right = sum(expression_of(face) == truth for truth, face in labelled)
    neutral = [face for truth, face in labelled if truth == Expression.NEUTRAL]
    called_smiling = sum(expression_of(face) == Expression.SMILING for face in neutral)
    sure = [(truth, face) for truth, face in labelled if expression_confidence(face) >= 0.5]
    sure_right = sum(expression_of(face) == truth for truth, face in sure)
    console.print(
        f"Expression tag: {_rate(right, len(labelled))} right; neutral photos called smiling "
        f"{_rate(called_smiling, len(neutral))}; confident calls (confidence ≥ 0.5, the ones captions use) "
        f"{_rate(sure_right, len(sure))} right, on {len(sure)} of {len(labelled)} photos."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("faces", nargs="?", type=Path, default=DEFAULT_FACES)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args()
    settings = Settings()
    strict, loose = settings.identity_threshold, settings.identity_review_threshold
    photos = analyse_all(args.faces, args.cache)
    people = sorted({p.person for p in photos})
    number = {person: int(person.rsplit("_", 1)[1]) if person[-1].isdigit() else 0 for person in people}
    tuning = [person for person in people if number[person] % 2 == 1]
    held_out = [person for person in people if person not in tuning]
    console = Console(width=200)
    faceless = sum(1 for p in photos if not p.analysis.faces)
    console.print(
        f"{len(people)} people, {len(photos) // len(CONDITIONS)} photos × {len(CONDITIONS)} conditions "
        f"({faceless} versions without a detected face left out); strict {strict:.2f}, loose {loose:.2f}."
    )
    print_rates(
        console, f"Tuning identities ({len(tuning)})", run(photos, tuning, strict, loose), strict, loose
    )
    print_rates(
        console, f"Held-out identities ({len(held_out)})", run(photos, held_out, strict, loose), strict, loose
    )
    print_expressions(console, photos)


if __name__ == "__main__":
    main()
