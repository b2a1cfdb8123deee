"""Seed 003's price matrix and creation plan: what each feature costs on each engine and model, before anything runs.

Features (seed 003's feature table): the wizard's 3 base images, the profile set of 8, one studio image per
tier (draft: 512 px long side, 12 steps; hq: 1024 px, 30 steps — pipeline/studio.py's TIERS), an edit, a 2×
upscale, and a LoRA training. For each, every engine/model that can do it: the unit price with its source,
the estimated cost — `estimate_cost` of the engine itself, the number the budget code reserves before a call
(router.py) — and whether NSFW work may go there (self-hosted engines yes, fal and Replicate no).

The creation plan picks, per creation feature, the cheapest option (external only, or any) and totals them
against seed 003's caps: the wizard (base images + profile set) ≤ $2, wizard + LoRA training ≤ $5.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from pydantic import Field

from flenwheel.domain import Frozen
from flenwheel.families import FAMILIES
from flenwheel.providers.base import (
    GenerationRequest,
    IdentityReference,
    ImageToImage,
    Inpaint,
    TextToImage,
    Upscale,
)
from flenwheel.providers.catalogue import ENDPOINTS
from flenwheel.providers.pricing import Price, PriceTable
from flenwheel.trainers.base import TrainingSpec

WIZARD_CAP_USD = 2.0  # seed 003: per influencer creation (wizard base + initial profile set)
CREATION_CAP_USD = 5.0  # seed 003: per influencer creation including LoRA training
# The LoRA priced in the plan: seed 002's defaults (rank 16, 10 epochs) on a 25-image set at 4 repeats,
# 1000 steps — fal's and Replicate's FLUX trainers' own default step count.
PLAN_TRAINING = TrainingSpec(trigger="ohwx woman", family="flux", epochs=10, repeats=4, resolution=1024)
PLAN_TRAINING_IMAGES = 25
_FREE_ENGINES = {"comfyui": "your ComfyUI server", "local": "diffusers on this machine"}


def _png(width: int, height: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (128, 128, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


class Feature(Frozen):
    id: str
    label: str
    kind: str  # the request kind it needs, or "training"
    units: int  # images (or trainings) one use of the feature makes
    area: str  # wizard, studio


FEATURES: tuple[Feature, ...] = (
    Feature(id="base_images", label="Wizard base images ×3", kind="text_to_image", units=3, area="wizard"),
    Feature(id="profile_set", label="Profile set of 8", kind="identity_reference", units=8, area="wizard"),
    Feature(id="studio_draft", label="Studio image, draft", kind="text_to_image", units=1, area="studio"),
    Feature(id="studio_hq", label="Studio image, hq", kind="text_to_image", units=1, area="studio"),
    Feature(id="edit", label="Edit (image-to-image)", kind="image_to_image", units=1, area="studio"),
    Feature(id="inpaint", label="Edit (inpaint)", kind="inpaint", units=1, area="studio"),
    Feature(id="upscale", label="Upscale 2×", kind="upscale", units=1, area="studio"),
    Feature(id="lora_training", label="LoRA training", kind="training", units=1, area="creation"),
)


def feature_request(feature: Feature, model: str | None) -> GenerationRequest:
    """The representative request of one use of `feature` (its count included) on `model`."""
    side, steps = (512, 12) if feature.id == "studio_draft" else (1024, 30)
    common: dict[str, Any] = {"prompt": "portrait photo", "model": model, "width": side, "height": side}
    if feature.kind == "text_to_image":
        return TextToImage(**common, count=feature.units, steps=steps)
    if feature.kind == "identity_reference":
        return IdentityReference(**common, references=(_png(64, 64),))
    if feature.kind == "image_to_image":
        return ImageToImage(**common, image=_png(side, side))
    if feature.kind == "inpaint":
        return Inpaint(**common, image=_png(side, side), mask=_png(side, side))
    return Upscale(image=_png(1024, 1024), factor=2, model=model)


class MatrixRow(Frozen):
    feature: str
    engine: str
    model: str
    family: str | None = None
    unit_price: str  # "$0.025 per megapixel", "free", …
    estimated_usd: float = Field(ge=0)
    nsfw_allowed: bool
    source: str
    note: str = ""


def price_text(price: Price) -> str:
    parts = []
    if price.per_image:
        parts.append(f"${price.per_image:g} per image")
    if price.per_megapixel:
        parts.append(f"${price.per_megapixel:g} per megapixel")
    if price.per_gpu_second:
        parts.append(f"${price.per_gpu_second:g} per GPU-second")
    return " + ".join(parts) or "free"


def _engines(prices: PriceTable) -> dict[str, Any]:
    """Estimating instances of the external engines (no key is used: estimates make no call)."""
    from flenwheel.providers.fal import FalProvider
    from flenwheel.providers.replicate import ReplicateProvider

    return {
        "fal": FalProvider("estimate-only", prices=prices),
        "replicate": ReplicateProvider("estimate-only", prices=prices),
    }


def _trainers() -> list[Any]:
    from flenwheel.trainers.fal import FalTrainer
    from flenwheel.trainers.replicate import ReplicateTrainer

    return [FalTrainer("estimate-only"), ReplicateTrainer("estimate-only", "owner/estimate")]


def price_matrix(prices: PriceTable | None = None) -> list[MatrixRow]:
    """Every (feature, engine, model) row. Per-GPU-second prices are estimated at the engine's time limit,
    the worst case the budget reserves (FLENWHEEL_REMOTE_MAX_BILLED_SECONDS)."""
    prices = prices or PriceTable.load()
    engines = _engines(prices)
    rows: list[MatrixRow] = []
    for feature in FEATURES:
        if feature.kind == "training":
            rows.extend(_training_rows(feature))
            continue
        for family in FAMILIES.values():  # self-hosted: free, NSFW allowed
            if feature.kind in family.kinds or (feature.kind == "upscale" and family.id == "sd15"):
                rows.append(
                    MatrixRow(
                        feature=feature.id,
                        engine="comfyui",
                        model="upscale model" if feature.kind == "upscale" else family.id,
                        family=None if feature.kind == "upscale" else family.id,
                        unit_price="free (your server's time)",
                        estimated_usd=0.0,
                        nsfw_allowed=True,
                        source=_FREE_ENGINES["comfyui"],
                    )
                )
        for entry in ENDPOINTS:
            if feature.kind not in entry.kinds:
                continue
            engine = engines[entry.service]
            request = feature_request(feature, entry.id)
            estimate = engine.estimate_cost(request)
            if feature.kind == "identity_reference":
                estimate *= feature.units  # one request per position
            price = prices.price(entry.service, entry.id)
            rows.append(
                MatrixRow(
                    feature=feature.id,
                    engine=entry.service,
                    model=entry.id,
                    family=entry.family,
                    unit_price=price_text(price),
                    estimated_usd=round(estimate, 4),
                    nsfw_allowed=bool(engine.allows_nsfw),
                    source=price.source or entry.source,
                    note="worst case at the time limit" if price.per_second else "",
                )
            )
    return rows


def _training_rows(feature: Feature) -> list[MatrixRow]:
    rows = [
        MatrixRow(
            feature=feature.id,
            engine=trainer_id,
            model="FLUX, Qwen-Image(-Edit), Z-Image Turbo"
            if trainer_id == "ai-toolkit"
            else "FLUX, SD1.5, SDXL",
            unit_price="free",
            estimated_usd=0.0,
            nsfw_allowed=True,
            source="your own GPU",
        )
        for trainer_id in ("ai-toolkit", "kohya")
    ]
    for trainer in _trainers():
        estimate = trainer.estimate_cost(PLAN_TRAINING, PLAN_TRAINING_IMAGES)
        rows.append(
            MatrixRow(
                feature=feature.id,
                engine=trainer.id,
                model="fal-ai/flux-lora-fast-training"
                if trainer.id == "fal"
                else "ostris/flux-dev-lora-trainer",
                family="flux-dev",
                unit_price="$0.002 per step" if trainer.id == "fal" else "$0.001525 per H100-second",
                estimated_usd=round(estimate, 4),
                nsfw_allowed=bool(trainer.allows_nsfw),
                source="https://fal.ai/models/fal-ai/flux-lora-fast-training"
                if trainer.id == "fal"
                else "https://replicate.com/pricing (H100)",
                note=f"{PLAN_TRAINING_IMAGES} images × {PLAN_TRAINING.repeats} repeats × {PLAN_TRAINING.epochs} epochs",
            )
        )
    return rows


class PlanLine(Frozen):
    feature: str
    engine: str
    model: str
    estimated_usd: float


class CreationPlan(Frozen):
    """One character's creation, priced before anything runs."""

    name: str  # "cheapest external", "cheapest"
    lines: tuple[PlanLine, ...]
    wizard_usd: float
    creation_usd: float
    wizard_cap_usd: float = WIZARD_CAP_USD
    creation_cap_usd: float = CREATION_CAP_USD

    @property
    def wizard_within_cap(self) -> bool:
        return self.wizard_usd <= self.wizard_cap_usd

    @property
    def creation_within_cap(self) -> bool:
        return self.creation_usd <= self.creation_cap_usd


# Among equally priced rows, seed 003's pod families come first: Z-Image Turbo, then the Qwen editor.
PREFERRED_FAMILIES = ("z-image-turbo", "qwen-image-edit-2509")


def creation_plan(
    rows: list[MatrixRow],
    name: str,
    allowed: Callable[[MatrixRow], bool],
    prefer: tuple[str, ...] = PREFERRED_FAMILIES,
) -> CreationPlan:
    """The cheapest allowed row for base images, the profile set and the LoRA training, totalled; ties go to
    the families in `prefer`, in order."""

    def rank(row: MatrixRow) -> tuple[float, int, str, str]:
        order = prefer.index(row.family) if row.family in prefer else len(prefer)
        return (row.estimated_usd, order, row.engine, row.model)

    lines = []
    for feature in ("base_images", "profile_set", "lora_training"):
        candidates = [row for row in rows if row.feature == feature and allowed(row)]
        if not candidates:
            continue
        best = min(candidates, key=rank)
        lines.append(
            PlanLine(feature=feature, engine=best.engine, model=best.model, estimated_usd=best.estimated_usd)
        )
    wizard = round(sum(line.estimated_usd for line in lines if line.feature != "lora_training"), 4)
    total = round(sum(line.estimated_usd for line in lines), 4)
    return CreationPlan(name=name, lines=tuple(lines), wizard_usd=wizard, creation_usd=total)


def creation_plans(rows: list[MatrixRow], pod_family: str | None = None) -> list[CreationPlan]:
    """Seed 003's two questions: with external providers only (the SFW path), and with the self-hosted pod
    (its family first: FLENWHEEL_COMFYUI_FAMILY, else Z-Image Turbo as on seed 003's pod)."""
    external = {"fal", "replicate"}
    prefer = ((pod_family,) if pod_family else ()) + PREFERRED_FAMILIES
    return [
        creation_plan(rows, "external providers (cheapest)", lambda row: row.engine in external, prefer),
        creation_plan(rows, "self-hosted pod + ai-toolkit", lambda row: row.engine not in external, prefer),
    ]
