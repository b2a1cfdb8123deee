"""Prices per provider and model — per image, per megapixel, per GPU-second — with where each came from.

The built-in table below is overridable: point FLENWHEEL_PRICES at a YAML file with the same shape
(`{provider: {model: {per_image: 0.003, source: "..."}}}`); its entries replace the built-in ones.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml
from pydantic import Field, ValidationError

from flenwheel.domain import Frozen
from flenwheel.errors import InvalidInput


class Price(Frozen):
    per_image: float = Field(default=0.0, ge=0)
    per_megapixel: float = Field(default=0.0, ge=0)
    per_gpu_second: float = Field(default=0.0, ge=0)
    source: str = ""

    @property
    def per_second(self) -> bool:
        """Billed by GPU time: the cost is known only afterwards, so estimates assume the engine's time limit."""
        return self.per_gpu_second > 0

    def cost(self, images: int, width: int, height: int, gpu_seconds: float = 0.0) -> float:
        megapixels = math.ceil(width * height / 1_000_000 * 100) / 100  # providers bill started 0.01 MP
        return round(
            images * (self.per_image + self.per_megapixel * megapixels) + self.per_gpu_second * gpu_seconds, 6
        )


FREE = Price(source="runs on your own hardware")

# Public list prices as read on the providers' pages (USD). Keep `source` pointing at the page.
BUILT_IN: dict[str, dict[str, Price]] = {
    "local": {"*": FREE},
    "comfyui": {"*": FREE},
    "esrgan": {"*": FREE},
    "fal": {
        "fal-ai/flux/schnell": Price(per_megapixel=0.003, source="https://fal.ai/models/fal-ai/flux/schnell"),
        "fal-ai/flux/dev": Price(per_megapixel=0.025, source="https://fal.ai/models/fal-ai/flux/dev"),
        "fal-ai/flux/dev/image-to-image": Price(
            per_megapixel=0.03, source="https://fal.ai/models/fal-ai/flux/dev/image-to-image"
        ),
        "fal-ai/flux-lora": Price(per_megapixel=0.035, source="https://fal.ai/models/fal-ai/flux-lora"),
        "fal-ai/flux-pulid": Price(per_megapixel=0.033, source="https://fal.ai/models/fal-ai/flux-pulid"),
        "fal-ai/esrgan": Price(
            per_gpu_second=0.00111, source="https://fal.ai/models/fal-ai/esrgan (per second)"
        ),
        "*": Price(per_megapixel=0.035, source="fal default: the flux-lora rate"),
    },
    "replicate": {
        "black-forest-labs/flux-schnell": Price(
            per_image=0.003, source="https://replicate.com/black-forest-labs/flux-schnell"
        ),
        "black-forest-labs/flux-dev": Price(
            per_image=0.025, source="https://replicate.com/black-forest-labs/flux-dev"
        ),
        "black-forest-labs/flux-dev-lora": Price(
            per_image=0.032, source="https://replicate.com/black-forest-labs/flux-dev-lora"
        ),
        "nightmareai/real-esrgan": Price(
            per_gpu_second=0.000225, source="https://replicate.com/pricing (T4)"
        ),
        "*": Price(per_image=0.032, source="replicate default: the flux-dev-lora rate"),
    },
}


class PriceTable:
    """Looks up the price of a provider's model, falling back to the provider's `*` entry."""

    def __init__(self, table: dict[str, dict[str, Price]]) -> None:
        self.table = table

    @classmethod
    def load(cls, override: Path | None = None) -> PriceTable:
        table = {provider: dict(models) for provider, models in BUILT_IN.items()}
        if override is not None:
            try:
                raw = yaml.safe_load(override.read_text()) or {}
                for provider, models in raw.items():
                    for model, price in models.items():
                        table.setdefault(str(provider), {})[str(model)] = Price.model_validate(price)
            except (OSError, yaml.YAMLError, ValidationError, AttributeError) as exc:
                raise InvalidInput(
                    f"price file {override} is not valid: {exc}. Expected {{provider: {{model: {{per_image: …}}}}}}"
                ) from None
        return cls(table)

    def price(self, provider: str, model: str) -> Price:
        models = self.table.get(provider, {})
        found = models.get(model) or models.get("*")
        if found is None:
            raise InvalidInput(f"no price for {provider}/{model}: add it to the FLENWHEEL_PRICES file")
        return found
