"""`flenwheel flywheel NAME`: rounds of flywheel 1 — synthetic → filter → review → pristine → v(N+1) → retrain →
compare (pipeline/flywheel.py)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from flenwheel.cli.common import JsonOption, console, err_console, open_project, print_json, safe


def register(app: typer.Typer) -> None:
    app.command("flywheel")(flywheel)


def flywheel(
    name: Annotated[str, typer.Argument(help="Character name")],
    rounds: Annotated[int, typer.Option("--rounds", min=1, max=20, help="At most this many rounds")] = 1,
    auto: Annotated[
        float | None,
        typer.Option(
            "--auto",
            min=0.0,
            max=1.0,
            help="Label a candidate pristine without review when its identity margin (threshold − distance) "
            "is at least this; the report says who accepted what",
        ),
    ] = None,
    prompts: Annotated[int, typer.Option("--prompts", min=1, max=40, help="Prompts per round")] = 6,
    variants: Annotated[
        int, typer.Option("--variants", min=1, max=8, help="Images per prompt (seed 001: 4–8)")
    ] = 4,
    size: Annotated[int | None, typer.Option("--size", min=64, max=2048, help="Image side in px")] = None,
    steps: Annotated[int | None, typer.Option("--steps", min=1, max=150)] = None,
    nsfw: Annotated[
        bool, typer.Option("--nsfw", help="Add NSFW scenarios (NSFW characters, self-hosted engines only)")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Run flywheel rounds until the model card's 80 % target is met, the budget would be exceeded, a measured
    round stops improving, or a round waits for your review; run it again to continue."""
    from flenwheel.pipeline.flywheel import FlywheelOptions, run_flywheel

    project = open_project()
    options = FlywheelOptions(
        rounds=rounds, auto_margin=auto, prompts=prompts, variants=variants, size=size, steps=steps, nsfw=nsfw
    )
    outcome = run_flywheel(
        project,
        name,
        options,
        on_stage=(lambda _m: None) if json_output else (lambda m: err_console.print(f"[dim]{safe(m)}[/]")),
    )
    if json_output:
        print_json(outcome.model_dump(mode="json"))
        return
    table = Table("round", "status", "candidates", "kept", "pristine (user/policy)", "dataset", "comparison")
    for item in outcome.rounds:
        record = item.record
        filtered = record.get("filter") or {}
        review = record.get("review") or {}
        dataset = record.get("dataset") or {}
        comparison = record.get("comparison") or {}
        table.add_row(
            str(item.number),
            item.status,
            str(len(record.get("candidates", []))),
            f"{filtered.get('kept', '')} (removed {filtered.get('removed', '')})" if filtered else "",
            f"{review.get('pristine_by_user', 0)}/{review.get('pristine_by_policy', 0)}" if review else "",
            safe((dataset.get("version") or {}).get("label") or dataset.get("why") or ""),
            safe(comparison.get("summary") or record.get("stopped") or ""),
        )
    console.print(table)
    for item in outcome.rounds:
        if item.record.get("note"):
            console.print(f"[yellow]note[/]: {safe(item.record['note'])}")
            break
    console.print(f"Stopped: {safe(outcome.stopped_because)}")
    if outcome.report:
        console.print(f"Report: {safe(outcome.report)}")
