"""`flenwheel evaluate NAME [RUN]`: measure every checkpoint × strength on the model-card prompts, pick one;
`flenwheel activate NAME CHECKPOINT` / `flenwheel deactivate NAME`: the user decides which LoRA the studio uses."""

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
    app.command("activate")(activate)
    app.command("deactivate")(deactivate)


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
    """Score each checkpoint at each strength on fixed prompts and pick the best; it becomes the active LoRA
    only when measured good enough (≥ 80 % success, or better than the current mode), else it is recommended."""
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
    decision = outcome.decision
    if decision.activated:
        console.print(f"[bold green]{safe(decision.summary)}:[/] {safe(decision.reason)}")
    else:
        console.print(f"[bold yellow]{safe(decision.summary)}:[/] {safe(decision.reason)}")
        if decision.rule != "already_active":
            console.print(
                f"  to use it anyway: flenwheel activate {safe(name)} {decision.checkpoint_id} "
                f"--strength {strength_text(decision.strength)}"
            )
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


def activate(
    name: Annotated[str, typer.Argument(help="Character name")],
    checkpoint: Annotated[
        str,
        typer.Argument(
            help="Checkpoint id, runN:stepM, runN:latest, latest (the newest run's last checkpoint) or "
            "recommended (the newest evaluation's pick)"
        ),
    ],
    strength: Annotated[
        float | None,
        typer.Option(
            "--strength",
            help="LoRA strength, above 0 and at most 4 (default: the evaluation's strength when it recommended "
            "this checkpoint, else 1.0)",
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Make a checkpoint the character's active LoRA, as your decision: the studio then draws in LoRA mode."""
    from flenwheel.pipeline.activation import activate as activate_checkpoint

    project = open_project()
    try:
        outcome = activate_checkpoint(project, name, checkpoint, strength)
    finally:
        project.close()
    if json_output:
        print_json(outcome.model_dump(mode="json"))
        return
    assert outcome.active is not None and outcome.strength is not None
    console.print(
        f"[bold green]activated[/] {safe(outcome.active.label)} at strength {outcome.strength:g} for "
        f"{safe(name)}" + (f" ({safe(outcome.strength_source)})" if outcome.strength_source else "")
    )
    if outcome.previous is not None and outcome.previous.id != outcome.active.id:
        console.print(
            f"  it replaces {safe(outcome.previous.label)} at strength {outcome.previous_strength:g}"
        )
    console.print(f"studio mode: {safe(outcome.mode_reason)}")


def deactivate(
    name: Annotated[str, typer.Argument(help="Character name")],
    json_output: JsonOption = False,
) -> None:
    """Turn the character's active LoRA off: the studio draws in identity-reference mode until one is activated."""
    from flenwheel.pipeline.activation import deactivate as deactivate_lora

    project = open_project()
    try:
        outcome = deactivate_lora(project, name)
    finally:
        project.close()
    if json_output:
        print_json(outcome.model_dump(mode="json"))
        return
    if outcome.previous is None:
        console.print(f"{safe(name)} had no active LoRA: nothing changed")
    else:
        console.print(
            f"[bold]deactivated[/] {safe(outcome.previous.label)} at strength {outcome.previous_strength:g}"
        )
    console.print(f"studio mode: {safe(outcome.mode_reason)}")
