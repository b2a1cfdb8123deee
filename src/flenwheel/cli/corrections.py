"""`flenwheel corrections collect|ls|attach|edit|drop|build|export` — flywheel 2's correction triplets."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from flenwheel.cli.common import JsonOption, console, open_project, print_json, safe

if TYPE_CHECKING:
    from flenwheel.datasets.corrections import TripletView

app = typer.Typer(
    help="Correction triplets (source, edit instruction, corrected image) for training an editor LoRA.",
    no_args_is_help=True,
)

Name = Annotated[str, typer.Argument(help="Character name")]
TripletId = Annotated[int, typer.Argument(help="Triplet id (see `flenwheel corrections ls`)")]


def _print(triplets: list[TripletView]) -> None:
    table = Table("id", "flawed", "source", "target", "instruction", "issue", "state")
    for t in triplets:
        state = "dropped" if t.dropped else ("complete" if t.complete else "needs a target or an instruction")
        table.add_row(
            str(t.id),
            f"#{t.flawed_asset_id}",
            f"#{t.source_asset_id}",
            f"#{t.target_asset_id}" if t.target_asset_id else "—",
            safe(t.instruction) or "—",
            safe(t.issue) or "—",
            state,
        )
    console.print(table)


@app.command("collect")
def collect(name: Name, json_output: JsonOption = False) -> None:
    """Make a triplet of every image labelled needs_correction that has none yet."""
    from flenwheel.datasets.corrections import collect_triplets

    made = collect_triplets(open_project(), name)
    if json_output:
        print_json({"collected": [t.as_dict() for t in made]})
        return
    console.print(f"{len(made)} new correction triplet(s).")
    if made:
        _print(made)


@app.command("ls")
def ls(
    name: Name,
    all_: Annotated[bool, typer.Option("--all", help="Show dropped triplets too")] = False,
    json_output: JsonOption = False,
) -> None:
    """List the character's correction triplets."""
    from flenwheel.datasets.corrections import list_triplets

    triplets = list_triplets(open_project(), name, include_dropped=all_)
    if json_output:
        print_json({"triplets": [t.as_dict() for t in triplets]})
        return
    _print(triplets)


@app.command("attach")
def attach(
    name: Name,
    triplet: TripletId,
    image: Annotated[Path, typer.Argument(help="The corrected image (JPEG, PNG or WebP)")],
    improvement: Annotated[
        str | None, typer.Option("--improvement", help="What the correction fixed")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Attach a corrected image as the triplet's target."""
    from flenwheel.datasets.corrections import attach_target

    result = attach_target(open_project(), name, triplet, image, improvement)
    if json_output:
        print_json(result.as_dict())
        return
    console.print(f"Triplet {result.id}: target #{result.target_asset_id}.")


@app.command("edit")
def edit(
    name: Name,
    triplet: TripletId,
    instruction: Annotated[str | None, typer.Option("--instruction", help="The edit instruction")] = None,
    issue: Annotated[str | None, typer.Option("--issue", help="What was wrong")] = None,
    improvement: Annotated[
        str | None, typer.Option("--improvement", help="What the correction fixed")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Change a triplet's instruction, issue or improvement (a dropped one comes back)."""
    from flenwheel.datasets.corrections import edit_triplet

    result = edit_triplet(open_project(), name, triplet, instruction, issue, improvement)
    if json_output:
        print_json(result.as_dict())
        return
    _print([result])


@app.command("drop")
def drop(name: Name, triplet: TripletId, json_output: JsonOption = False) -> None:
    """Leave a triplet out of the next versions (kept on record)."""
    from flenwheel.datasets.corrections import drop_triplet

    result = drop_triplet(open_project(), name, triplet)
    if json_output:
        print_json(result.as_dict())
        return
    console.print(f"Triplet {result.id} dropped.")


@app.command("build")
def build(name: Name, json_output: JsonOption = False) -> None:
    """Freeze the complete triplets as the next immutable version (c1, c2, …)."""
    from flenwheel.datasets.corrections import build_triplet_set

    version, created = build_triplet_set(open_project(), name)
    if json_output:
        print_json({"version": version.label, "created": created, "triplets": version.items})
        return
    if created:
        console.print(f"Built correction set [bold]{version.label}[/] with {len(version.items)} triplet(s).")
    else:
        console.print(f"Nothing changed since {version.label}; no new version built.")


@app.command("export")
def export(
    name: Name,
    fmt: Annotated[str, typer.Option("--format", help="ai-toolkit, fal or diffsynth")],
    out: Annotated[Path, typer.Option("--out", help="A new or empty folder to write into")],
    version: Annotated[int | None, typer.Option("--version", help="Set number (default: latest)")] = None,
    json_output: JsonOption = False,
) -> None:
    """Write a correction set in an editor trainer's layout, with triplets.json."""
    from flenwheel.datasets.corrections import export_triplets

    result = export_triplets(open_project(), name, fmt, out, version)
    if json_output:
        print_json(result)
        return
    console.print(
        f"Exported {result.version} ({result.triplets} triplets) as {result.format.value} to {safe(result.out)}"
    )
    for path in result.files:
        console.print(f"  {safe(path)}")


@app.command("train")
def train(
    name: Name,
    trainer: Annotated[
        str, typer.Option("--trainer", help="ai-toolkit or fal (an editor needs control images)")
    ],
    version: Annotated[
        int | None, typer.Option("--version", help="Correction set number (default: latest)")
    ] = None,
    base_model: Annotated[
        str | None, typer.Option("--base-model", help="Default: Qwen/Qwen-Image-Edit-2509")
    ] = None,
    family: Annotated[str | None, typer.Option("--family", help="Default: qwen-image-edit")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1)] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, max=1000)] = None,
    rank: Annotated[int | None, typer.Option("--rank", min=1, max=256)] = None,
    learning_rate: Annotated[float | None, typer.Option("--lr", help="Learning rate")] = None,
    json_output: JsonOption = False,
) -> None:
    """Train an editor LoRA (seed 001 step 2.2) on a correction set; run it again to resume."""
    from flenwheel.pipeline.training import train_editor
    from flenwheel.trainers.registry import TrainerRegistry

    project = open_project()
    chosen = TrainerRegistry.from_settings(project.settings).get(trainer)
    outcome = train_editor(
        project,
        name,
        chosen,
        set_number=version,
        base_model=base_model,
        family=family,
        max_steps=max_steps,
        epochs=epochs,
        rank=rank,
        learning_rate=learning_rate,
    )
    if json_output:
        print_json(outcome)
        return
    console.print(
        f"{outcome.status}: editor run {outcome.run_id} on {outcome.dataset_version} with {outcome.trainer}, "
        f"{outcome.steps} steps, {len(outcome.checkpoints)} checkpoint(s), ${outcome.cost_usd:.2f}"
    )


@app.command("compare")
def compare(
    name: Name,
    run: Annotated[int | None, typer.Option("--run", help="Editor run id (default: the newest)")] = None,
    per_source: Annotated[int, typer.Option("--per-source", min=1, max=15, help="Edits per image")] = 2,
    asset: Annotated[list[int] | None, typer.Option("--asset", help="Source asset id, repeatable")] = None,
    strength: Annotated[float, typer.Option("--strength", help="Editor LoRA strength")] = 1.0,
    json_output: JsonOption = False,
) -> None:
    """Enrich the same images with and without the editor LoRA and compare how often the character drifts."""
    from flenwheel.jobs.base import LocalJobContext
    from flenwheel.pipeline.editor import compare_editor
    from flenwheel.pipeline.enrich import editor_lora

    project = open_project()
    chosen = editor_lora(project, name, run, strength)
    result = compare_editor(project, name, LocalJobContext(), chosen, per_source=per_source, source_ids=asset)
    if json_output:
        print_json(result.model_dump(mode="json"))
        return
    table = Table("arm", "edits", "measured", "drifted", "drift rate (95 % CI)", "cost")
    for arm in (result.without, result.with_editor):
        rate = (
            f"{arm.drift_rate:.0%} ({arm.interval[0]:.0%}–{arm.interval[1]:.0%})"
            if arm.drift_rate is not None and arm.interval is not None
            else "not measurable"
        )
        table.add_row(
            arm.label, str(arm.edits), str(arm.measured), str(arm.drifted), rate, f"${arm.cost_usd:.2f}"
        )
    console.print(table)
    console.print(f"{result.verdict}: {safe(result.summary)}")
