"""The `flenwheel` command line: one module per command group, each a thin layer over the library."""

from __future__ import annotations

import json
import sys

from flenwheel.cli.app import app
from flenwheel.errors import FlenwheelError


def main() -> None:
    """Run the CLI; flenwheel's own errors print as one clear line (or JSON), never a traceback."""
    try:
        app()
    except FlenwheelError as exc:
        if "--json" in sys.argv:
            print(json.dumps({"error": str(exc), "type": type(exc).__name__}))
        else:
            from rich.console import Console
            from rich.markup import escape

            Console(stderr=True, highlight=False).print(
                f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True
            )
        sys.exit(2)


__all__ = ["app", "main"]
