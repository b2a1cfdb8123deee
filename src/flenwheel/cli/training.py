"""`flenwheel train` and `flenwheel trainers`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

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
    app.command("train")(train)
    app.command("trainers")(trainers)


def train(
    name: Annotated[str, typer.Argument(help="Character name")],
    trainer: Annotated[
        str, typer.Option("--trainer", help="Trainer id (see `flenwheel trainers`)")
    ] = "local",
    version: Annotated[
        int | None, typer.Option("--version", help="Dataset version number (default: latest)")
    ] = None,
    base_model: Annotated[
        str | None,
        typer.Option("--base-model", help="tiny, a diffusers folder / .safetensors, or a remote model id"),
    ] = None,
    family: Annotated[
        str | None,
        typer.Option(
            "--family",
            help="Training architecture: sd, sdxl, flux, qwen-image, qwen-image-edit or z-image "
            "(`flenwheel trainers` says which trainer trains which)",
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, max=1000)] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1)] = None,
    rank: Annotated[int | None, typer.Option("--rank", min=1, max=256)] = None,
    alpha: Annotated[float | None, typer.Option("--alpha", help="Network alpha (default: the rank)")] = None,
    learning_rate: Annotated[float | None, typer.Option("--lr", help="Learning rate")] = None,
    optimizer: Annotated[
        str | None, typer.Option("--optimizer", help="adamw, adamw8bit, prodigy, sgd")
    ] = None,
    resolution: Annotated[
        int | None, typer.Option("--resolution", help="Training resolution (multiple of 64)")
    ] = None,
    repeats: Annotated[int | None, typer.Option("--repeats", min=1, max=1000)] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, max=64)] = None,
    seed: Annotated[int | None, typer.Option("--seed", min=0)] = None,
    save_every_epochs: Annotated[int | None, typer.Option("--save-every-epochs", min=1)] = None,
    save_every_steps: Annotated[int | None, typer.Option("--save-every-steps", min=1)] = None,
    ema: Annotated[
        bool | None, typer.Option("--ema/--no-ema", help="Keep an EMA of the LoRA weights")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Train a LoRA of the character on its dataset; run it again with the same settings to resume."""
    from flenwheel.pipeline.training import train_character
    from flenwheel.trainers.registry import TrainerRegistry

    project = open_project()
    chosen = TrainerRegistry.from_settings(project.settings).get(trainer)
    overrides: dict[str, Any] = {
        "base_model": base_model,
        "family": family,
        "epochs": epochs,
        "max_steps": max_steps,
        "rank": rank,
        "alpha": alpha,
        "learning_rate": learning_rate,
        "optimizer": optimizer,
        "resolution": resolution,
        "repeats": repeats,
        "batch_size": batch_size,
        "seed": seed,
        "save_every_epochs": save_every_epochs,
        "save_every_steps": save_every_steps,
        "ema": ema,
    }
    with progress_bar("Training", 1, enabled=not json_output) as advance:

        def on_progress(step: int, total: int, _loss: float | None) -> None:
            advance(step, total)

        outcome = train_character(
            project, name, chosen, version_number=version, on_progress=on_progress, **overrides
        )
    if json_output:
        print_json(outcome)
        return
    if outcome.resumed:
        err_console.print(f"[yellow]resumed[/] run {outcome.run_id} where it stopped")
    table = Table("checkpoint", "step", "epoch", "file", title=f"run {outcome.run_id} ({outcome.trainer})")
    for checkpoint in outcome.checkpoints:
        table.add_row(
            str(checkpoint["id"]),
            str(checkpoint["step"]),
            str(checkpoint["epoch"] or ""),
            safe(Path(checkpoint["path"]).name),
        )
    console.print(table)
    loss = f", final loss {outcome.final_loss:.4f}" if outcome.final_loss is not None else ""
    console.print(
        f"{outcome.status}: {outcome.steps} steps on dataset {outcome.dataset_version}{loss}, "
        f"${outcome.cost_usd:.2f}. Next: `flenwheel evaluate {safe(name)} {outcome.run_id}`"
    )


def trainers(json_output: JsonOption = False) -> None:
    """The trainers configured here, what they train, and whether NSFW datasets may go to them."""
    from flenwheel.cli.common import project_dir
    from flenwheel.config import load_settings
    from flenwheel.trainers.registry import TrainerRegistry

    registry = TrainerRegistry.from_settings(load_settings(project=project_dir()))
    found = registry.all()
    from flenwheel.families import families_of_arch

    def trains(trainer: object) -> list[str]:
        return sorted(getattr(trainer, "trains", ()))

    if json_output:
        print_json(
            [
                {
                    "id": t.id,
                    "dataset_format": t.dataset_format,
                    "allows_nsfw": t.allows_nsfw,
                    "trains": trains(t),
                    "families": [family for arch in trains(t) for family in families_of_arch(arch)],
                }
                for t in found
            ]
        )
        return
    table = Table("trainer", "trains (architecture → model families)", "dataset format", "NSFW datasets")
    for trainer in found:
        table.add_row(
            trainer.id,
            "; ".join(f"{arch} → {', '.join(families_of_arch(arch))}" for arch in trains(trainer)) or "?",
            trainer.dataset_format,
            "yes" if trainer.allows_nsfw else "never",
        )
    console.print(table)
