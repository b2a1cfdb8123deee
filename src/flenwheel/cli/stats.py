"""`flenwheel stats`: seed 003's success metrics from this project's store, each SLA marked met or not met."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from flenwheel.cli.common import JsonOption, console, open_project, print_json, safe


def register(app: typer.Typer) -> None:
    app.command("stats")(stats)


def stats(
    since: Annotated[
        str, typer.Option("--since", help="Window ending now: 7d, 12h, 30m, 2w, a date, or `all`.")
    ] = "7d",
    character: Annotated[
        str | None, typer.Option("--character", help="Only this character (NAME or #ID).")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """P50/P90 time-to-first and time-to-all, completion and failure rates with the most frequent errors,
    cost per image (per area, engine and model), spend per character against seed 003's caps, and the studio's
    identity pass rate per mode — with each SLA of seed 003 marked met or not met."""
    from flenwheel.metrics import compute_stats
    from flenwheel.metrics.figures import parse_since
    from flenwheel.store.project import get_character

    window = parse_since(since)
    project = open_project()
    try:
        with project.db.session() as session:
            ids = None
            if character is not None:
                ids = frozenset({get_character(session, character).id})
            figures = compute_stats(session, window, ids)
    finally:
        project.close()
    if json_output:
        print_json(figures.model_dump(mode="json"))
        return
    print_stats(figures, since)


def _money(value: float | None) -> str:
    return "—" if value is None else f"${value:.4f}"


def _rate(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.0f}%"


def print_stats(figures: Any, since: str) -> None:
    """The tables: SLAs, then areas × engines, spend against the caps, identity per mode."""
    window = "all time" if figures.since is None else f"since {figures.since:%Y-%m-%d %H:%M} UTC ({since})"
    console.print(f"[bold]{figures.requests}[/] requests {window}")
    slas = Table("area", "SLA (P50)", "P50/P90 (n)", "verdict", "measured on", title="Seed 003 SLAs")
    colours = {"met": "green", "not met": "red", "too few samples": "yellow"}
    for sla in figures.slas:
        engines = ", ".join(sla.engines) or "—"
        if sla.note:
            engines += f" — {sla.note}"
        slas.add_row(
            sla.area.value,
            safe(sla.says),
            sla.figures.text,
            f"[{colours[sla.verdict]}]{sla.verdict}[/]",
            safe(engines),
        )
    console.print(slas)
    by_engine = Table(
        "area",
        "engine / models",
        "requests",
        "done",
        "failed",
        "first P50/P90",
        "all P50/P90",
        "$/image",
        "top errors",
        title="By area, engine and model",
    )
    for row in figures.engines:
        errors = "; ".join(f"{e.kind} ×{e.count}" for e in row.errors) or "—"
        by_engine.add_row(
            row.area.value,
            safe(f"{row.engine} / {', '.join(row.models) or '—'}\n{row.hardware}"),
            str(row.requests),
            _rate(row.completion_rate),
            f"{_rate(row.failure_rate)} ({row.failed})",
            row.time_to_first.text,
            row.time_to_all.text,
            _money(row.cost_per_image_usd),
            safe(errors),
        )
    if figures.engines:
        console.print(by_engine)
    spend = Table(
        "character",
        "creation / $2",
        "with LoRA / $5",
        "total",
        "committed / budget",
        title="Spend per character",
    )
    for row in figures.spend:
        spend.add_row(
            safe(row.character),
            _capped(row.creation_usd, row.creation_within_cap),
            _capped(row.with_lora_usd, row.with_lora_within_cap),
            _money(row.total_usd),
            f"{_money(row.committed_usd)} / {_money(row.budget_usd)}",
        )
    if figures.spend:
        console.print(spend)
    identity = Table(
        "mode",
        "images",
        "passed",
        "drifted",
        "not measurable",
        "not checked",
        "pass rate",
        "expected",
        title="Studio identity per mode (not measurable is never a pass)",
    )
    for row in figures.identity:
        measured = row.passed + row.drifted
        rate = _rate(row.pass_rate) if row.pass_rate is not None else f"n={measured} (<5)"
        identity.add_row(
            row.mode,
            str(row.images),
            str(row.passed),
            str(row.drifted),
            str(row.not_measurable),
            str(row.not_checked),
            rate,
            _rate(row.expected),
        )
    if figures.identity:
        console.print(identity)
    for note in figures.notes:
        console.print(f"note: {safe(note)}")


def _capped(value: float, within: bool) -> str:
    return f"{_money(value)} [{'green' if within else 'red'}]{'within' if within else 'over'}[/]"
