"""`flenwheel demo`: the flow so far on the bundled example photos, ending in a report."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

import flenwheel
from flenwheel.characters import create_character
from flenwheel.config import load_settings
from flenwheel.datasets.curate import CurateReport, curate
from flenwheel.datasets.export import ExportFormat, ExportResult, export_dataset
from flenwheel.datasets.ingest import IngestOutcome, ingest
from flenwheel.datasets.versions import BuildResult, build_dataset_version
from flenwheel.domain import AssetKind
from flenwheel.errors import FlenwheelError
from flenwheel.pipeline.generation import GenerationOutcome, run_generation
from flenwheel.providers.base import TextToImage, Upscale
from flenwheel.report.curation import write_curation_report
from flenwheel.store.models import Character
from flenwheel.store.project import Project

DEMO_CHARACTER = "lisa"
DEMO_TOKEN = "ohwx"
DEMO_CLASS = "woman"
DEMO_MARKER = "flenwheel-demo"


@dataclass(frozen=True)
class DemoResult:
    project: Path
    ingested: list[IngestOutcome]
    curation: CurateReport
    dataset: BuildResult
    exports: list[ExportResult]
    generated: GenerationOutcome
    upscaled: GenerationOutcome
    report: Path


def default_examples_dir() -> Path:
    """examples/demo-photos of the source checkout this package runs from."""
    return Path(flenwheel.__file__).resolve().parents[2] / "examples" / "demo-photos"


def run_demo(
    project_dir: Path,
    examples: Path | None = None,
    on_stage: Callable[[str], None] = lambda _stage: None,
    on_progress: Callable[[int, int], None] | None = None,
) -> DemoResult:
    """Init (or reuse) a project, ingest the example photos, curate, build v-next, export every format."""
    examples = examples or default_examples_dir()
    if not examples.is_dir():
        raise FlenwheelError(
            f"Example photos not found at {examples}: run the demo from a flenwheel checkout or pass --examples DIR."
        )
    marker = project_dir / DEMO_MARKER
    if (
        project_dir.exists()
        and not marker.exists()
        and (not project_dir.is_dir() or any(project_dir.iterdir()))
    ):
        raise FlenwheelError(
            f"{project_dir} already exists and is not a demo project: the demo only writes into a new folder "
            "(or one an earlier demo made). Pass another --out."
        )
    on_stage("Creating the project")
    project = Project.init(load_settings(project=project_dir))
    marker.write_text("made by `flenwheel demo`; the demo may rewrite this folder\n")
    try:
        with project.db.session() as session:
            exists = session.scalar(select(Character).where(Character.name == DEMO_CHARACTER)) is not None
        if not exists:
            create_character(project, DEMO_CHARACTER, DEMO_TOKEN, DEMO_CLASS)
        on_stage(f"Ingesting {examples}")
        ingested = ingest(project, DEMO_CHARACTER, [examples])
        on_stage("Curating: quality, faces, identity gate")
        curation = curate(project, DEMO_CHARACTER, on_progress=on_progress)
        on_stage("Building the dataset version")
        dataset = build_dataset_version(project, DEMO_CHARACTER)
        on_stage("Exporting for kohya, ai-toolkit and fal")
        exports = []
        for fmt in ExportFormat:
            out = project_dir / "exports" / f"{fmt.value}-{dataset.version.label}"
            if out.exists():
                shutil.rmtree(out)  # the demo's own output folder, rebuilt on every run
            exports.append(export_dataset(project, DEMO_CHARACTER, fmt, out))
        on_stage("Generating on the built-in tiny model (random weights: it draws no faces, only texture)")
        prompt = f"photo of {DEMO_TOKEN} {DEMO_CLASS}, upper body, studio lighting"
        generated = run_generation(
            project, DEMO_CHARACTER, TextToImage(prompt=prompt, seed=1234, steps=8, width=128, height=128)
        )
        on_stage("Upscaling it 2x with Real-ESRGAN")
        source = generated.outputs[0]
        upscaled = run_generation(
            project,
            DEMO_CHARACTER,
            Upscale(image=source.file.read_bytes(), factor=2),
            kind=AssetKind.UPSCALED,
            parents=(source.asset_id,),
        )
        report = write_curation_report(
            project,
            curation,
            dataset.version,
            exports,
            project_dir / "report.html",
            generated=[("generated", generated), ("upscaled 2x", upscaled)],
        )
    finally:
        project.close()
    return DemoResult(
        project_dir.resolve(), ingested, curation, dataset, exports, generated, upscaled, report
    )
