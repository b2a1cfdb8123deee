"""`flenwheel sheet` (anchor poses → picks → variations, seed 004) and `flenwheel enrich` (seed 001 step 1.2)."""

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
    app.command("sheet")(sheet)
    app.command("sheet-config")(sheet_config)
    app.command("enrich")(enrich)


def _context(advance: Any) -> Any:
    from flenwheel.jobs.base import LocalJobContext

    return LocalJobContext(lambda done, _total, _message: advance(done))


def sheet(
    name: Annotated[str, typer.Argument(help="Character name")],
    pick_auto: Annotated[
        bool,
        typer.Option(
            "--pick-auto", help="Pick each anchor by identity (face distance to the base) + quality"
        ),
    ] = False,
    pick: Annotated[
        list[str] | None, typer.Option("--pick", help="ANCHOR=ASSET_ID: your pick for one anchor, repeatable")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Draw the character sheet (poses and variations: `flenwheel sheet-config NAME` shows and edits them).

    Without --pick-auto the variations wait for your picks: run again with --pick ANCHOR=ASSET_ID.
    """
    from flenwheel.errors import InvalidInput
    from flenwheel.pipeline.sheet import load_sheet_config, pick_anchor, run_sheet

    project = open_project()
    for item in pick or ():
        anchor, _, asset_id = item.partition("=")
        if not asset_id.strip().isdigit():
            raise InvalidInput(f"--pick {item!r}: give ANCHOR=ASSET_ID, e.g. --pick front=12")
        pick_anchor(project, name, anchor.strip(), int(asset_id))
    config = load_sheet_config(project, name)
    total = len(config.anchors) * config.candidates + len(config.variations)
    with progress_bar("Sheet", total, enabled=not json_output) as advance:
        result = run_sheet(project, name, _context(advance), pick_auto=pick_auto)
    if json_output:
        print_json(result.model_dump(mode="json"))
        return
    table = Table(
        "anchor",
        "candidates (asset: identity, pose)",
        "pick",
        title=f"Anchors — {safe(result.anchors.method)}",
    )
    picks = {p.anchor: p for p in result.anchors.picks}
    for pose in config.anchors:
        own = [c for c in result.anchors.candidates if c.anchor == pose.id]
        chosen = picks.get(pose.id)
        table.add_row(
            pose.id,
            ", ".join(
                f"{c.image.asset_id}: {c.identity.status}" + (f", pose {c.pose.status}" if c.pose else "")
                for c in own
            ),
            f"{chosen.asset_id} ({chosen.by}: {safe(chosen.reason)})" if chosen else "—",
        )
    console.print(table)
    variations = Table("variation", "anchor", "status", "asset", "why", title="Variations")
    for outcome in result.variations.outcomes:
        variations.add_row(
            outcome.variation,
            outcome.anchor,
            outcome.status,
            str(outcome.image.asset_id) if outcome.image else "—",
            safe(outcome.reason),
        )
    console.print(variations)
    v = result.variations
    console.print(
        f"{v.passed} passed, {v.drifted} drifted, {v.not_measurable} not measurable, {v.skipped} waiting for a pick; "
        f"change poses with `flenwheel sheet-config {safe(name)} FILE`"
    )
    if result.anchors.pose_drifted:
        console.print(
            f"{result.anchors.pose_drifted} anchor candidate(s) drifted from their pose (flagged; picked only "
            "when no candidate shows the pose)"
        )
    note = result.anchors.note or v.note
    if note:
        err_console.print(f"[yellow]note:[/] {safe(note)}")


def sheet_config(
    name: Annotated[str, typer.Argument(help="Character name (or #ID)")],
    file: Annotated[
        Path | None,
        typer.Argument(help="A sheet YAML file to store (edit the printed one); without it, print the sheet"),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Print the character's sheet as YAML, or store FILE as its new sheet (checked first).

    The sheet lives in the project's database, so workers on other hosts read the same one.
    """
    from flenwheel.errors import InvalidInput
    from flenwheel.pipeline.sheet import load_sheet_config, parse_sheet_yaml, save_sheet_config, sheet_yaml

    project = open_project()
    if file is None:
        config = load_sheet_config(project, name)
    else:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"cannot read {file}: {exc}") from None
        config = save_sheet_config(project, name, parse_sheet_yaml(text, str(file)))
        if not json_output:
            err_console.print(
                f"stored the sheet of {safe(name)}: {len(config.anchors)} anchors, "
                f"{len(config.variations)} variations"
            )
    if json_output:
        print_json(config.model_dump(mode="json"))
    elif file is None:
        typer.echo(sheet_yaml(config), nl=False)


def enrich(
    name: Annotated[str, typer.Argument(help="Character name")],
    per_source: Annotated[int, typer.Option("--per-source", min=1, max=15, help="Edits per image")] = 4,
    template: Annotated[
        list[str] | None, typer.Option("--template", help="Template id (e.g. background_beach), repeatable")
    ] = None,
    asset: Annotated[
        list[int] | None, typer.Option("--asset", help="Enrich this asset id, repeatable")
    ] = None,
    editor: Annotated[
        int | None,
        typer.Option("--editor", help="Edit with this editor LoRA run (`flenwheel corrections train`)"),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Edit good images with background / lighting / style / camera-angle templates; each output is linked
    to its source and checked by the identity gate."""
    from flenwheel.pipeline.enrich import editor_lora, enrichment_sources
    from flenwheel.pipeline.enrich import enrich as run_enrich

    project = open_project()
    chosen_editor = editor_lora(project, name, editor) if editor is not None else None
    sources = len(asset) if asset else len(enrichment_sources(project, name)[0])
    total = max(1, sources * (len(template) if template else per_source))
    with progress_bar("Enriching", total, enabled=not json_output) as advance:
        result = run_enrich(
            project,
            name,
            _context(advance),
            per_source=per_source,
            template_ids=template,
            source_ids=asset,
            editor=chosen_editor,
        )
    if json_output:
        print_json(result.model_dump(mode="json"))
        return
    table = Table(
        "source", "template", "status", "asset", "identity", title=f"Enrichment — {safe(result.source_rule)}"
    )
    for outcome in result.outcomes:
        table.add_row(
            str(outcome.source_asset_id),
            outcome.template,
            outcome.status,
            str(outcome.image.asset_id),
            safe(outcome.identity.reason),
        )
    console.print(table)
    console.print(f"{result.passed} passed, {result.drifted} drifted, {result.not_measurable} not measurable")
    if result.note:
        err_console.print(f"[yellow]note:[/] {safe(result.note)}")
