"""`flenwheel evaluate NAME [RUN]`: measure every checkpoint × strength on the model-card prompts, pick one."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from flenwheel.cli.common import (
    JsonOption,
    console,
    err_console,
    open_project,
    print_json,
    progress_bar,
    safe,
)


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)


def evaluate(
    name: Annotated[str, typer.Argument(help="Character name")],
    run: Annotated[int | None, typer.Argument(help="Training run id (default: the newest)")] = None,
    strengths: Annotated[
        str, typer.Option("--strengths", help="LoRA strengths to try, comma-separated")
    ] = "0.6,0.8,1.0",
    size: Annotated[
        int | None, typer.Option("--size", help="Image side in px (default: 64 on the tiny model, else 512)")
    ] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", min=1, max=150, help="Sampling steps (default: 4 tiny, else 20)")
    ] = None,
    prompts: Annotated[
        str, typer.Option("--prompts", help="all (the 23 model-card prompts) or quick (6 of them)")
    ] = "all",
    provider: Annotated[
        str | None, typer.Option("--provider", help="Engine id (see `flenwheel providers`)")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Score each checkpoint at each strength on fixed prompts; make the best the character's active LoRA."""
    from flenwheel.errors import InvalidInput
    from flenwheel.evaluation.grid import parse_strengths, strength_text
    from flenwheel.pipeline.evaluation import evaluate_run

    if prompts not in ("all", "quick"):
        raise InvalidInput(f"--prompts {prompts!r}: use all or quick")
    chosen = parse_strengths(strengths)
    project = open_project()
    with progress_bar("Evaluating", 1, enabled=not json_output) as advance:
        outcome = evaluate_run(
            project,
            name,
            run,
            strengths=chosen,
            prompts="all" if prompts == "all" else "quick",
            size=size,
            steps=steps,
            provider=provider,
            on_progress=advance,
        )
    if json_output:
        print_json(outcome.model_dump(mode="json"))
        return
    table = Table(
        "checkpoint",
        "strength",
        "faces",
        "success",
        "similarity ± spread",
        "near copies",
        "joint",
        title=f"run {outcome.run_id}: {outcome.checkpoints} checkpoint(s) × {len(outcome.strengths)} "
        f"strength(s) × {outcome.prompts} prompt(s)",
    )
    chosen_cell = (outcome.selection.checkpoint_id, outcome.selection.strength)
    for cell in outcome.cells:
        similarity = (
            "n/a" if cell.mean_similarity is None else f"{cell.mean_similarity:.2f} ± {cell.spread or 0:.2f}"
        )
        mark = " ◀" if (cell.checkpoint_id, cell.strength) == chosen_cell else ""
        table.add_row(
            cell.label + mark,
            f"{strength_text(cell.strength)}",
            f"{cell.faces}/{cell.images}",
            f"{cell.success_rate:.0%}",
            similarity,
            str(cell.near_copies),
            f"{cell.joint_score:.2f}",
        )
    console.print(table)
    console.print(f"[bold]selected:[/] {safe(outcome.selection.reason)}")
    for item in outcome.advice:
        console.print(
            f"[yellow]advice:[/] {safe(item.symptom)} — {safe(item.evidence)}. {safe(item.remedy)}."
        )
    console.print(f"prompt adherence: {safe(outcome.adherence)}")
    if outcome.note:
        err_console.print(f"[yellow]note:[/] {safe(outcome.note)}")
    resumed = outcome.images - outcome.generated_now
    if resumed:
        err_console.print(f"{resumed} image(s) were already scored by an earlier, interrupted run")
    if outcome.report is not None:
        console.print(f"report: {safe(outcome.report)}")
