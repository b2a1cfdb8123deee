"""`flenwheel demo`: the whole flow on the bundled example photos and the embedded defaults, ending in a report.

Ingest → curate → dataset → export → generate/upscale, then the background chain through the embedded job
backend (identity gate → dataset → train the tiny model → evaluate every checkpoint → activate). The tiny
model draws no faces, so the evaluation cannot measure its pick: the chain ends "recommended, not activated
(not measurable)" and the first studio image is drawn in identity-reference mode. The demo then activates the
recommendation itself, *as the user* would with `flenwheel activate`, and draws a second image in LoRA mode,
saying so.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from flenwheel.report.render import render
from flenwheel.store.models import Character
from flenwheel.store.project import Project

if TYPE_CHECKING:
    from markupsafe import Markup

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
    chain: list[dict[str, Any]]  # the stage jobs: stage, status, result
    studio: Any  # StudioResult of one image drawn after the chain, in the mode it left
    activation: Any  # ActivationOutcome when the demo activated the recommendation as the user, else None
    studio_lora: Any  # StudioResult drawn after that activation (LoRA mode), else None
    evaluation_report: Path | None
    report: Path
    flywheel: Any = None  # FlywheelOutcome of the one round the demo runs with the active LoRA, else None


# One flywheel round with the active LoRA: a quick look (seed 001 asks 4–8 variants a prompt; the demo draws 2).
DEMO_FLYWHEEL = {"rounds": 1, "prompts": 1, "variants": 2}
# The chain's settings for the demo: small enough for a few minutes on 2 CPU cores.
DEMO_CHAIN_OPTIONS: dict[str, Any] = {
    "skip": ["sheet"],  # the demo character comes from photos, not from a picked base image
    "training": {"resolution": 64, "rank": 4, "epochs": 3, "repeats": 2, "learning_rate": 1e-3, "seed": 11},
    "evaluation": {"prompts": "quick", "size": 64, "steps": 4},
}


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
            "(or one an earlier demo made). Pass another folder with --out or --project."
        )
    on_stage(f"Creating the demo project in {project_dir.resolve()}")
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
        from flenwheel.pipeline.activation import activate, deactivate
        from flenwheel.pipeline.studio import decide_mode, studio_generate

        if decide_mode(project, DEMO_CHARACTER).mode == "lora":
            on_stage(
                "Turning off the LoRA an earlier demo run activated as the user, so this run tells the same story"
            )
            deactivate(project, DEMO_CHARACTER)
        on_stage("Background chain as jobs: identity gate → dataset → train (tiny) → evaluate → activate")
        chain = run_chain_in_process(project, on_stage)
        on_stage("Studio: drawing in the mode the chain left")

        prompt = f"photo of {DEMO_TOKEN} {DEMO_CLASS} in a park"
        studio = studio_generate(project, DEMO_CHARACTER, prompt, seed=77, size=_demo_size())
        activation = studio_lora = None
        recommended = _recommended(chain)
        if decide_mode(project, DEMO_CHARACTER).mode != "lora" and recommended is not None:
            checkpoint, strength = recommended
            on_stage(
                f"Activating the recommended checkpoint {checkpoint} at strength {strength} as the user "
                f"(`flenwheel activate {DEMO_CHARACTER} {checkpoint} --strength {strength}`): evaluation could "
                "not measure it, so it did not activate it by itself"
            )
            activation = activate(project, DEMO_CHARACTER, checkpoint, strength)
            on_stage("Studio: drawing again, now in LoRA mode")
            studio_lora = studio_generate(project, DEMO_CHARACTER, prompt, seed=77, size=_demo_size())
        flywheel = None
        if decide_mode(project, DEMO_CHARACTER).mode == "lora":
            from flenwheel.pipeline.flywheel import FlywheelOptions, run_flywheel

            on_stage("Flywheel: one round with the active LoRA — generate → filter → review → next version")
            flywheel = run_flywheel(
                project, DEMO_CHARACTER, FlywheelOptions(**DEMO_FLYWHEEL), on_stage=on_stage
            )
        studio_images = [(f"studio ({studio.mode})", studio)]
        if studio_lora is not None:
            studio_images.append(
                (f"studio ({studio_lora.mode}, activated by the demo as the user)", studio_lora)
            )
        evaluation_report = _evaluation_report(chain)
        report = write_curation_report(
            project,
            curation,
            dataset.version,
            exports,
            project_dir / "report.html",
            generated=[
                ("generated", generated),
                ("upscaled 2x", upscaled),
                *studio_images,
            ],
            sections=[
                ("Background chain", chain_section(chain, evaluation_report, project_dir)),
                ("Studio mode", _mode_section(studio, activation)),
                *([("Flywheel", _flywheel_section(flywheel, project_dir))] if flywheel is not None else []),
            ],
        )
    finally:
        project.close()
    return DemoResult(
        project_dir.resolve(),
        ingested,
        curation,
        dataset,
        exports,
        generated,
        upscaled,
        chain,
        studio,
        activation,
        studio_lora,
        evaluation_report,
        report,
        flywheel,
    )


def _demo_size() -> Any:
    from flenwheel.pipeline.stage import RenderSize

    return RenderSize(width=128, height=128, steps=8)


def run_chain_in_process(project: Project, on_stage: Callable[[str], None]) -> list[dict[str, Any]]:
    """Start the embedded worker pool in this process, submit the chain, and wait for its last stage."""
    from flenwheel.jobs.embedded import EmbeddedBackend
    from flenwheel.pipeline.chain import chain_status, start_chain
    from flenwheel.pipeline.kinds import register_pipeline_kinds

    register_pipeline_kinds()  # the pool below runs the chain's stages
    backend = EmbeddedBackend(project, workers=min(2, os.cpu_count() or 1)).start()
    try:
        root = start_chain(project, backend, DEMO_CHARACTER, DEMO_CHAIN_OPTIONS)
        backend.wait(root, timeout=60)
        announced: set[int] = set()
        while True:
            stages = chain_status(project, root)
            for stage in stages:
                if stage["job"] not in announced and stage["status"] in ("running", "succeeded"):
                    announced.add(stage["job"])
                    on_stage(f"  job {stage['job']}: {stage['stage']}")
            if not stages or any(s["status"] in ("failed", "cancelled", "interrupted") for s in stages):
                break
            if stages[-1]["stage"] == "activate" and stages[-1]["status"] == "succeeded":
                break
            backend.wait(stages[-1]["job"], timeout=2)
            time.sleep(0)  # let the worker threads run between polls
    finally:
        backend.shutdown(timeout=60)
    failed = [s for s in stages if s["status"] != "succeeded"]
    if failed:
        raise FlenwheelError(f"the demo chain stopped at {failed[0]['stage']}: {failed[0]['error']}")
    return stages


def _flywheel_section(flywheel: Any, project_dir: Path) -> Markup:
    """The demo's flywheel round in a line each, and the link to the flywheel report."""
    link = (
        os.path.relpath(Path(flywheel.report).resolve(), project_dir.resolve()) if flywheel.report else None
    )
    return render("demo_flywheel.html", flywheel=flywheel, link=link)


def _mode_section(studio: Any, activation: Any) -> Markup:
    """Which mode each studio image was drawn in and why, and the demo's activation as the user, if any."""
    return render("studio_mode.html", first_reason=studio.mode_reason, activation=activation)


def _recommended(chain: list[dict[str, Any]]) -> tuple[int, float] | None:
    """The checkpoint and strength the chain's activate stage recommended without activating, if any."""
    for stage in chain:
        result = stage["result"]
        recommended = result.get("recommended_checkpoint")
        if stage["stage"] == "activate" and not result.get("activated") and recommended is not None:
            return int(result["recommended_checkpoint"]), float(result["recommended_strength"])
    return None


def _evaluation_report(chain: list[dict[str, Any]]) -> Path | None:
    for stage in chain:
        if stage["stage"] == "evaluate" and stage["result"].get("report"):
            return Path(stage["result"]["report"])
    return None


def chain_section(chain: list[dict[str, Any]], evaluation_report: Path | None, project_dir: Path) -> Markup:
    """An HTML table of the chain's jobs, linking the evaluation report."""
    rows = []
    for stage in chain:
        result = stage["result"]
        detail = {
            "gate": lambda r: f"{r.get('labels')}",
            "dataset": lambda r: f"v{r.get('number')}, {r.get('items')} images",
            "train": lambda r: (
                f"run {r.get('run')}: {r.get('steps')} steps, {r.get('checkpoints')} checkpoints, "
                f"final loss {r.get('final_loss') or 0:.3f}"
            ),
            "evaluate": lambda r: f"{r.get('images')} images; {r.get('reason', '')}",
            "activate": lambda r: f"{r.get('decision')}; studio mode {r.get('reason')}",
        }.get(stage["stage"], lambda r: "")(result)
        rows.append(
            {"job": stage["job"], "stage": stage["stage"], "status": stage["status"], "detail": detail}
        )
    link = None
    if evaluation_report is not None:
        link = os.path.relpath(evaluation_report.resolve(), project_dir.resolve())
    return render("chain.html", rows=rows, link=link)
