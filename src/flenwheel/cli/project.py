"""`flenwheel init` and `flenwheel character …`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from flenwheel.cli.common import JsonOption, console, open_project, print_json, project_dir, safe, state

character_app = typer.Typer(help="Create and list characters.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.add_typer(character_app, name="character")


def init(
    directory: Annotated[
        Path | None, typer.Argument(help="Folder for the new project (default: --project or .)")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Create a project: a SQLite database (WAL) and a content-addressed blob folder."""
    from flenwheel.config import load_settings, masked_url
    from flenwheel.store.project import Project

    root = directory or project_dir()
    project = Project.init(load_settings(project=root))
    result = {
        "project": str(root.resolve()),
        "database": masked_url(project.db.url),  # never the password
        "blobs": str(project.blobs.root),
    }
    project.close()
    if json_output:
        print_json(result)
    else:
        console.print(f"Project ready at [bold]{safe(result['project'])}[/]")
        console.print(
            f"Next: flenwheel --project {safe(root)} character create NAME --token TOKEN --class person"
        )
    state.project = root


@character_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Character name, e.g. lisa")],
    token: Annotated[
        str | None, typer.Option("--token", help="Trigger token the LoRA learns, e.g. ohwx_char")
    ] = None,
    class_word: Annotated[
        str | None, typer.Option("--class", help="Class word, e.g. person, woman, man")
    ] = None,
    nsfw: Annotated[
        bool, typer.Option("--nsfw", help="Allow NSFW work (kept on self-hosted engines)")
    ] = False,
    budget: Annotated[float, typer.Option("--budget", help="Spending cap in USD")] = 5.0,
    caption_template: Annotated[
        str | None,
        typer.Option("--caption-template", help="e.g. 'photo of {token} {class_word}, {angle} view'"),
    ] = None,
    spec: Annotated[
        Path | None,
        typer.Option("--spec", help="Wizard spec YAML (appearance + identity); token/class derived"),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Create a character with its trigger token and class word, or from a wizard spec (--spec)."""
    from flenwheel.characters import create_character
    from flenwheel.errors import InvalidInput

    project = open_project()
    if spec is not None:
        from flenwheel.pipeline.spec import create_character_from_spec, load_spec

        given = {"token": token, "class_word": class_word, "nsfw_allowed": True if nsfw else None}
        loaded = load_spec(spec)
        loaded = loaded.model_copy(update={k: v for k, v in given.items() if v is not None})
        info = create_character_from_spec(project, loaded, budget, name=name)
    elif token is None or class_word is None:
        raise InvalidInput("give --token and --class (e.g. --token ohwx_char --class woman), or --spec FILE")
    else:
        info = create_character(project, name, token, class_word, nsfw, budget, caption_template)
    if json_output:
        print_json(info)
    else:
        console.print(
            f"Created [bold]{safe(info.name)}[/] (token {safe(info.token)}, class {safe(info.class_word)})"
        )


@character_app.command("list")
def list_(json_output: JsonOption = False) -> None:
    """List the project's characters."""
    from flenwheel.characters import list_characters

    infos = list_characters(open_project())
    if json_output:
        print_json(infos)
        return
    table = Table("name", "token", "class", "nsfw", "budget", "assets")
    for info in infos:
        table.add_row(
            safe(info.name),
            safe(info.token),
            safe(info.class_word),
            str(info.nsfw),
            f"${info.budget_usd:.2f}",
            str(info.assets),
        )
    console.print(table)
