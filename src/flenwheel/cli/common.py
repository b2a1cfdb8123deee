"""What every command shares: the project location, JSON vs. rich output, progress bars."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

# Piped output (CI logs, `| less`) gets room for the reason column instead of Rich's 80-column default.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 150)
err_console = Console(stderr=True, highlight=False)

JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]


@dataclasses.dataclass
class CliState:
    project: Path | None = None


state = CliState()


def project_dir() -> Path:
    from flenwheel.config import load_settings

    if state.project is not None:
        return state.project
    return load_settings().project


def open_project() -> Any:
    from flenwheel.config import load_settings
    from flenwheel.store.project import Project

    return Project.open(load_settings(project=project_dir()))


def to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def print_json(value: Any) -> None:
    print(json.dumps(to_jsonable(value), indent=2, ensure_ascii=False))


def safe(text: object) -> str:
    """User data printed through rich: brackets in file names must not be read as markup."""
    return escape(str(text))


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Any]:
    """A rich progress bar on stderr; `advance(n_done)` sets the completed count."""
    if not enabled or total == 0:
        yield lambda done, _total=total: None
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=total)

        def advance(done: int, _total: int = total) -> None:
            progress.update(task, completed=done, total=_total)

        yield advance
