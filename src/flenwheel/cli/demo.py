"""`flenwheel demo`: the whole flow on the embedded defaults and the bundled example photos."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from flenwheel.cli.common import JsonOption, console, err_console, print_json, progress_bar, safe, state
from flenwheel.cli.curation import print_curate_report
from flenwheel.cli.dataset import print_composition


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


DEFAULT_DEMO_FOLDER = Path("demo-project")


def demo_folder(out: Path | None) -> Path:
    """Where the demo writes: --out, else --project or $FLENWHEEL_PROJECT, else ./demo-project.

    An explicit --project that names another folder than --out is an error, not a silent choice."""
    from flenwheel.config import load_settings
    from flenwheel.errors import InvalidInput

    if state.project is not None:
        if out is not None and out.resolve() != state.project.resolve():
            raise InvalidInput(
                f"--project {state.project} and --out {out} name different folders: give only one of them"
            )
        return state.project
    if out is not None:
        return out
    settings = load_settings()
    if "project" in settings.model_fields_set:  # FLENWHEEL_PROJECT is set
        return settings.project
    return DEFAULT_DEMO_FOLDER


def demo(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Project folder for the demo, reused if an earlier demo made it "
            "(default: --project, else $FLENWHEEL_PROJECT, else ./demo-project)",
        ),
    ] = None,
    examples: Annotated[Path | None, typer.Option("--examples", help="Folder of example photos")] = None,
    json_output: JsonOption = False,
) -> None:
    """Run the flow on the example photos: ingest, curate, build a dataset, export, write report.html."""
    from flenwheel.pipeline.demo import run_demo

    def stage(text: str) -> None:
        if not json_output:
            err_console.print(f"[bold cyan]»[/] {safe(text)}")

    folder = demo_folder(out)
    with progress_bar("Analysing faces", 1, enabled=not json_output) as advance:
        result = run_demo(folder, examples, on_stage=stage, on_progress=advance)
    if json_output:
        from flenwheel.cli.dataset import version_summary

        print_json(
            {
                "project": result.project,
                "ingested": result.ingested,
                "curation": result.curation,
                "dataset": {"created": result.dataset.created, **version_summary(result.dataset.version)},
                "exports": result.exports,
                "generated": result.generated,
                "upscaled": result.upscaled,
                "chain": result.chain,
                "studio": result.studio.model_dump(mode="json"),
                "activation": result.activation.model_dump(mode="json") if result.activation else None,
                "studio_lora": result.studio_lora.model_dump(mode="json") if result.studio_lora else None,
                "evaluation_report": result.evaluation_report,
                "flywheel": result.flywheel.model_dump(mode="json") if result.flywheel else None,
                "report": result.report,
            }
        )
        return
    rejected = [o for o in result.ingested if o.status == "rejected"]
    if rejected:
        table = Table("file", "rejected because", title="Rejected at ingest")
        for outcome in rejected:
            table.add_row(safe(outcome.path), safe(outcome.detail))
        console.print(table)
    print_curate_report(result.curation)
    print_composition(result.dataset.version)
    for export in result.exports:
        console.print(f"Exported {export.format.value}: {safe(export.files[0])}")
    from flenwheel.cli.studio import copy_outputs

    for title, generation in (("Generated", result.generated), ("Upscaled", result.upscaled)):
        files = copy_outputs(generation, result.project / "outputs")
        for output, file in zip(generation.outputs, files, strict=True):
            console.print(
                f"{title}: asset {output.asset_id} {output.width}x{output.height} via {safe(generation.provider)} "
                f"({safe(generation.model)}): {safe(file)}"
            )
    if result.generated.note:
        err_console.print(f"[yellow]note:[/] {safe(result.generated.note)}")
    chain = Table("job", "stage", "status", "result", title="Background chain (embedded job backend)")
    for job in result.chain:
        chain.add_row(str(job["job"]), job["stage"], job["status"], safe(_stage_summary(job)))
    console.print(chain)
    _print_studio(result.project, result.studio)
    if result.activation is not None:
        activation = result.activation
        console.print(
            f"[bold]The demo activated the recommendation as the user[/] (flenwheel activate "
            f"{safe(activation.character)} {activation.active.id} --strength {activation.strength:g}): the "
            "evaluation could not measure it on the tiny model, so it did not activate it by itself"
        )
    if result.studio_lora is not None:
        _print_studio(result.project, result.studio_lora)
    if result.evaluation_report is not None:
        console.print(f"Evaluation report: [bold]{safe(result.evaluation_report)}[/]")
    if result.flywheel is not None:
        for item in result.flywheel.rounds:
            filtered = item.record.get("filter") or {}
            console.print(
                f"Flywheel round {item.number}: {len(item.record.get('candidates', []))} synthetic image(s), "
                f"filter kept {filtered.get('kept', 0)} (removed: {safe(filtered.get('removed_by', {}))}); "
                f"{safe((item.record.get('dataset') or {}).get('why') or 'a new dataset version')}"
            )
        console.print(f"Flywheel report: [bold]{safe(result.flywheel.report)}[/]")
    console.print(f"Report: [bold]{safe(result.report)}[/]  (open it in a browser)")


def _print_studio(project: Path, studio: Any) -> None:
    for output in studio.outputs:
        target = project / "outputs" / f"{output.asset_id:05d}-{output.seed}.png"
        shutil.copyfile(output.file, target)
        console.print(
            f"Studio ({studio.mode} mode): asset {output.asset_id} {output.width}x{output.height}: {safe(target)}"
        )
    console.print(f"  why this mode: {safe(studio.mode_reason)}")


def _stage_summary(stage: dict[str, Any]) -> str:
    r = stage["result"]
    if stage["status"] != "succeeded":
        return str(stage["error"] or stage["message"])
    if stage["stage"] == "train":
        return f"run {r['run']}: {r['steps']} steps, {r['checkpoints']} checkpoints, final loss {r['final_loss']:.3f}"
    if stage["stage"] == "evaluate":
        return f"{r['images']} images scored; {r['reason']}"
    if stage["stage"] == "activate":
        return f"{r['decision']}; studio now in {r['mode']} mode — {r['reason']}"
    if stage["stage"] == "gate":
        return ", ".join(f"{count} {label}" for label, count in r["labels"].items())
    if stage["stage"] == "dataset":
        return f"v{r['number']}, {r['items']} images" + ("" if r["created"] else " (unchanged)")
    return stage["message"]
