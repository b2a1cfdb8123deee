"""`flenwheel dataset build|show|export`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from flenwheel.cli.common import JsonOption, console, open_project, print_json, safe

app = typer.Typer(help="Build immutable dataset versions and export them for trainers.", no_args_is_help=True)


def version_summary(version: Any) -> dict[str, Any]:
    return {
        "version": version.label,
        "images": len(version.items),
        "composition": version.composition,
        "items": [
            {
                "asset_id": i.asset_id,
                "sha256": i.sha256,
                "caption": i.caption,
                "angle": i.angle,
                "shot": i.shot,
                "expression": i.expression,
                "quality": i.quality,
            }
            for i in version.items
        ],
    }


def print_composition(version: Any) -> None:
    composition = version.composition
    table = Table("target", "actual", "met", title=f"Dataset {version.label}: {composition['images']} images")
    for target in composition["targets"]:
        table.add_row(
            safe(target["target"]), safe(target["actual"]), "[green]yes[/]" if target["met"] else "[red]no[/]"
        )
    console.print(table)
    if composition.get("subsets"):
        report = composition["subsets"]
        subsets = Table(
            "subset", "images", "repeats", "steps / epoch", "caption tag", "gate", title="Subsets"
        )
        for group in report["subsets"]:
            subsets.add_row(
                safe(group["name"]),
                f"{group['images']} ({group['image_share']:.0%})",
                str(group["repeats"]),
                f"{group['steps_per_epoch']} ({group['step_share']:.0%})",
                safe(group["caption_tag"] or ""),
                group["gate"],
            )
        console.print(subsets)
        console.print(f"Images {report['images_ratio']}, steps {report['steps_ratio']}.")
    if composition.get("lineage"):
        lineage = composition["lineage"]
        console.print(f"Since the previous version: +{lineage['added']} / -{lineage['removed']} images.")


@app.command("build")
def build(
    name: Annotated[str, typer.Argument(help="Character name")], json_output: JsonOption = False
) -> None:
    """Snapshot the images labelled good as the next immutable version (v1, v2, …)."""
    from flenwheel.datasets.versions import build_dataset_version

    result = build_dataset_version(open_project(), name)
    if json_output:
        print_json({"created": result.created, **version_summary(result.version)})
        return
    if result.created:
        console.print(f"Built dataset [bold]{result.version.label}[/].")
    else:
        console.print(f"Nothing changed since {result.version.label}; no new version built.")
    print_composition(result.version)


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Character name")],
    version: Annotated[int | None, typer.Option("--version", help="Version number (default: latest)")] = None,
    json_output: JsonOption = False,
) -> None:
    """Show a dataset version's images and composition."""
    from flenwheel.datasets.versions import get_dataset_version

    found = get_dataset_version(open_project(), name, version)
    if json_output:
        print_json(version_summary(found))
        return
    print_composition(found)


@app.command("export")
def export(
    name: Annotated[str, typer.Argument(help="Character name")],
    fmt: Annotated[str, typer.Option("--format", help="kohya, ai-toolkit or zip")],
    out: Annotated[Path, typer.Option("--out", help="A new or empty folder to write into")],
    version: Annotated[int | None, typer.Option("--version", help="Version number (default: latest)")] = None,
    repeats: Annotated[
        int | None, typer.Option("--repeats", help="kohya repeats (default: about 200 steps an epoch)")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Write a dataset version in a trainer's format, with metadata.json."""
    from flenwheel.datasets.export import export_dataset

    result = export_dataset(open_project(), name, fmt, out, version, repeats)
    if json_output:
        print_json(result)
        return
    console.print(
        f"Exported {result.version} ({result.images} images) as {result.format.value} to {safe(result.out)}"
    )
    for path in result.files:
        console.print(f"  {safe(path)}")
