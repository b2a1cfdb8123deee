"""`flenwheel ingest`, `curate`, `review` and `caption`."""

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

LABEL_STYLE = {"needs_review": "magenta", "good": "green", "reject": "red", "needs_correction": "yellow"}


def register(app: typer.Typer) -> None:
    app.command("ingest")(ingest)
    app.command("curate")(curate)
    app.command("review")(review)
    app.command("caption")(caption)
    app.command("reference")(reference)


def ingest(
    name: Annotated[str, typer.Argument(help="Character name")],
    paths: Annotated[
        list[Path], typer.Argument(help="Image files and folders (folders are read recursively)")
    ],
    reference: Annotated[
        bool, typer.Option("--reference", help="These photos define the character's identity for the gate")
    ] = False,
    subset: Annotated[
        str | None,
        typer.Option(
            "--subset",
            help="Dataset subset (seed 002): realbody = face-less body photos, gated on a visible body, "
            "20 repeats, captioned realistic_body; char = the identity-gated character set (40 repeats)",
        ),
    ] = None,
    subset_repeats: Annotated[
        int | None, typer.Option("--subset-repeats", min=1, max=1000, help="The subset's own repeats")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Take photos into the project. Bad files are rejected one by one with a reason; the batch goes on."""
    from flenwheel.datasets.ingest import expand_paths
    from flenwheel.datasets.ingest import ingest as run_ingest
    from flenwheel.datasets.subsets import preset

    chosen = preset(subset, subset_repeats) if subset else None
    project = open_project()
    total = sum(1 for _ in expand_paths(paths))
    with progress_bar("Ingesting", total, enabled=not json_output) as advance:
        done = 0

        def step(_outcome: Any) -> None:
            nonlocal done
            done += 1
            advance(done)

        outcomes = run_ingest(project, name, paths, reference=reference, on_file=step, subset=chosen)
    if json_output:
        print_json({"files": outcomes})
        return
    added = sum(1 for o in outcomes if o.status == "added")
    duplicates = sum(1 for o in outcomes if o.status == "duplicate")
    console.print(f"Ingested {added} new image(s); {duplicates} already present.")
    rejected = [o for o in outcomes if o.status == "rejected"]
    if rejected:
        table = Table("file", "rejected because", title=f"{len(rejected)} file(s) rejected")
        for outcome in rejected:
            table.add_row(safe(outcome.path), safe(outcome.detail))
        console.print(table)


def curate(
    name: Annotated[str, typer.Argument(help="Character name")],
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold",
            min=0.05,
            max=1.5,
            help="Identity distance at or below which a photo is the character (default 0.42, calibrated)",
        ),
    ] = None,
    review_threshold: Annotated[
        float | None,
        typer.Option(
            "--review-threshold",
            min=0.05,
            max=1.5,
            help="Up to this distance a photo needs review instead of being rejected (default 0.60)",
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Measure quality, find faces and run the identity gate; every image gets a suggested label with a reason.
    Photos the gate could not decide are labelled needs_review and listed first."""
    from flenwheel.datasets.curate import curate as run_curate

    project = open_project()
    with progress_bar("Analysing faces and poses", 1, enabled=not json_output) as advance:
        report = run_curate(
            project,
            name,
            on_progress=advance,
            identity_threshold=threshold,
            review_threshold=review_threshold,
        )
    if json_output:
        print_json(report)
        return
    print_curate_report(report)


def print_curate_report(report: Any) -> None:
    table = Table(
        "id",
        "file",
        "label",
        "by",
        "dist",
        "angle",
        "shot",
        "body pose",
        "reason",
        title=f"Curation of {report.character}",
    )
    for d in report.decisions:
        style = LABEL_STYLE.get(d.label.value, "")
        distance = "" if d.identity_distance is None else f"{d.identity_distance:.2f}"
        table.add_row(
            str(d.asset_id),
            safe(d.file),
            f"[{style}]{d.label.value}[/]",
            d.decided_by.value,
            distance,
            safe(d.angle or ""),
            safe(d.shot or ""),
            safe(", ".join(d.pose) if d.pose is not None else "no person"),
            safe(d.reason),
        )
    console.print(table)
    if report.ingest_rejections:
        rejected = Table("file", "rejected at ingest because", title="Files that never became images")
        for path, _code, detail in report.ingest_rejections:
            rejected.add_row(safe(path), safe(detail))
        console.print(rejected)
    for warning in report.warnings:
        err_console.print(f"[yellow]Warning:[/] {safe(warning)}")
    counts = {label: sum(1 for d in report.decisions if d.label.value == label) for label in LABEL_STYLE}
    console.print(
        f"Identity from {safe(report.identity_source)}: the character at distance ≤ {report.threshold:.2f}, "
        f"needs review up to {report.review_threshold:.2f}. good {counts['good']}, needs_review "
        f"{counts['needs_review']} (listed first: label them with `flenwheel review`), reject "
        f"{counts['reject']}, needs_correction {counts['needs_correction']}; "
        f"{report.analysed_now} analysed now, the rest from cache."
    )


def review(
    name: Annotated[str, typer.Argument(help="Character name")],
    asset: Annotated[str, typer.Argument(help="Asset id, sha256 prefix or original file name")],
    label: Annotated[str, typer.Option("--label", help="good, needs_correction or reject")],
    reason: Annotated[str, typer.Option("--reason", help="Why (required unless good)")] = "",
    json_output: JsonOption = False,
) -> None:
    """Set your own label on an image; it overrides curate's suggestion."""
    from flenwheel.datasets.review import review_asset

    saved = review_asset(open_project(), name, asset, label, reason)
    result = {"asset_id": saved.asset_id, "label": saved.label, "reason": saved.reason}
    if json_output:
        print_json(result)
    else:
        console.print(f"Asset {saved.asset_id} labelled {safe(saved.label)}.")


def reference(
    name: Annotated[str, typer.Argument(help="Character name")],
    asset: Annotated[str, typer.Argument(help="Asset id, sha256 prefix or original file name")],
    off: Annotated[
        bool, typer.Option("--off", help="Unmark: the photo no longer defines the identity")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Mark an ingested photo as a reference (it defines who the character is), or unmark it with --off."""
    from flenwheel.datasets.review import set_reference

    asset_id = set_reference(open_project(), name, asset, not off)
    if json_output:
        print_json({"asset_id": asset_id, "is_reference": not off})
    else:
        console.print(f"Asset {asset_id} {'is no longer' if off else 'is now'} a reference.")


def caption(
    name: Annotated[str, typer.Argument(help="Character name")],
    asset: Annotated[str, typer.Argument(help="Asset id, sha256 prefix or original file name")],
    text: Annotated[str, typer.Argument(help="The new caption; must contain the trigger token")],
    json_output: JsonOption = False,
) -> None:
    """Replace an image's caption (curate will not overwrite an edited caption)."""
    from flenwheel.datasets.review import set_caption

    saved = set_caption(open_project(), name, asset, text)
    if json_output:
        print_json({"asset": asset, "caption": saved})
    else:
        err_console.print("Caption saved.")
        console.print(safe(saved))
