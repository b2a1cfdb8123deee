"""Where every bench leaves its figures: one markdown table per bench under bench/results/ (git-ignored).

save_table("curate_vs_face_recognition", table, notes=["..."])  # → bench/results/curate_vs_face_recognition.md
"""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from pathlib import Path

from rich.table import Table

RESULTS = Path(__file__).resolve().parent / "results"


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown(table: Table) -> str:
    """A rich Table as a GitHub markdown table (title as a heading above it)."""
    columns = table.columns
    cells = [[str(cell) for cell in column.cells] for column in columns]
    rows = max((len(column) for column in cells), default=0)
    lines = [f"### {table.title}", ""] if table.title else []
    lines.append("| " + " | ".join(_cell(column.header) for column in columns) + " |")
    lines.append("|" + "|".join("---:" if column.justify == "right" else "---" for column in columns) + "|")
    for index in range(rows):
        lines.append("| " + " | ".join(_cell(column[index]) for column in cells) + " |")
    return "\n".join(lines) + "\n"


def save_table(name: str, tables: Table | list[Table], notes: list[str] | tuple[str, ...] = ()) -> Path:
    """Write bench/results/NAME.md: the tables, the notes under them, and the machine they ran on."""
    RESULTS.mkdir(exist_ok=True)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        f"# {name}",
        "",
        f"{when}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min)",
        "",
    ]
    for table in tables if isinstance(tables, list) else [tables]:
        parts += [markdown(table), ""]
    parts += [f"- {note}" for note in notes]
    path = RESULTS / f"{name}.md"
    path.write_text("\n".join(parts).rstrip() + "\n", encoding="utf-8")
    return path
