"""The `flenwheel` command line: one module per command group, each a thin layer over the library."""

from __future__ import annotations

import json
import sys

from flenwheel.cli.app import app
from flenwheel.errors import FlenwheelError


def _print_error(message: str, kind: str) -> None:
    if "--json" in sys.argv:
        print(json.dumps({"error": message, "type": kind}))
        return
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


def main() -> None:
    """Run the CLI; flenwheel's own errors print as one clear line (or JSON), never a traceback."""
    try:
        if "--json" in sys.argv:
            # Usage errors then come back as exceptions too, so they can be answered in JSON.
            from typer.exceptions import TyperException

            try:
                sys.exit(app(standalone_mode=False) or 0)
            except TyperException as exc:
                _print_error(exc.format_message(), "UsageError")
                sys.exit(2)
        app()
    except FlenwheelError as exc:
        _print_error(str(exc), type(exc).__name__)
        sys.exit(2)


__all__ = ["app", "main"]
