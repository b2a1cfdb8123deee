"""The Typer application and the global --project option; command groups register themselves here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flenwheel.cli import (
    corrections,
    curation,
    dataset,
    demo,
    evaluate,
    flywheel,
    jobs,
    project,
    serve,
    sheet,
    stats,
    studio,
    training,
)
from flenwheel.cli.common import state

app = typer.Typer(
    name="flenwheel",
    help="Keep an AI character the same person: curate a dataset, train and measure a LoRA, generate on-model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _global(
    project_path: Annotated[
        Path | None,
        typer.Option(
            "--project", "-p", help="Project folder (default: $FLENWHEEL_PROJECT, else the current folder)."
        ),
    ] = None,
) -> None:
    state.project = project_path


project.register(app)
curation.register(app)
studio.register(app)
sheet.register(app)
training.register(app)
evaluate.register(app)
flywheel.register(app)
app.add_typer(dataset.app, name="dataset")
app.add_typer(corrections.app, name="corrections")
demo.register(app)
jobs.register(app)
serve.register(app)
stats.register(app)
