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
    # Each image's megapixels are rounded up to a multiple of this (fal bills whole megapixels).
    megapixel_step: float = Field(default=0.01, gt=0)
    source: str = ""

    @property
    def per_second(self) -> bool:
        """Billed by GPU time: the cost is known only afterwards, so estimates assume the engine's time limit."""
        return self.per_gpu_second > 0

    def cost(self, images: int, width: int, height: int, gpu_seconds: float = 0.0) -> float:
        # Rounded up to the billing step; the small epsilon keeps an exact multiple from rounding up once more.
        megapixels = math.ceil(width * height / 1_000_000 / self.megapixel_step - 1e-9) * self.megapixel_step
        return round(
            images * (self.per_image + self.per_megapixel * megapixels) + self.per_gpu_second * gpu_seconds, 6
        )


FREE = Price(source="runs on your own hardware")


def _fal_mp(per_megapixel: float, endpoint: str) -> Price:
    return Price(per_megapixel=per_megapixel, megapixel_step=1.0, source=f"https://fal.ai/models/{endpoint}")


# Public list prices as read on the providers' pages (USD). Keep `source` pointing at the page.
BUILT_IN: dict[str, dict[str, Price]] = {
    "local": {"*": FREE},
    "comfyui": {"*": FREE},
    "esrgan": {"*": FREE},
    # fal's model pages: "Images are billed by rounding up to the nearest megapixel".
    "fal": {
        "fal-ai/flux/schnell": _fal_mp(0.003, "fal-ai/flux/schnell"),
        "fal-ai/flux/dev": _fal_mp(0.025, "fal-ai/flux/dev"),
        "fal-ai/flux/dev/image-to-image": _fal_mp(0.03, "fal-ai/flux/dev/image-to-image"),
        "fal-ai/flux-lora": _fal_mp(0.035, "fal-ai/flux-lora"),
        "fal-ai/flux-lora/image-to-image": _fal_mp(0.035, "fal-ai/flux-lora/image-to-image"),
        "fal-ai/flux-lora/inpainting": _fal_mp(0.035, "fal-ai/flux-lora/inpainting"),
        "fal-ai/flux-pulid": _fal_mp(0.033, "fal-ai/flux-pulid"),
        "fal-ai/flux-pro/v1.1-ultra": Price(
            per_image=0.06, source="https://fal.ai/models/fal-ai/flux-pro/v1.1-ultra (per image)"
        ),
        "fal-ai/flux-kontext/dev": _fal_mp(0.025, "fal-ai/flux-kontext/dev"),
        "fal-ai/bytedance/seedream/v4/text-to-image": Price(
            per_image=0.03,
            source="https://fal.ai/models/fal-ai/bytedance/seedream/v4/text-to-image (per image)",
        ),
        "fal-ai/bytedance/seedream/v4/edit": Price(
            per_image=0.03, source="https://fal.ai/models/fal-ai/bytedance/seedream/v4/edit (per image)"
        ),
        "fal-ai/qwen-image": _fal_mp(0.02, "fal-ai/qwen-image"),
        "fal-ai/qwen-image-edit-plus": _fal_mp(0.03, "fal-ai/qwen-image-edit-plus"),
        "fal-ai/qwen-image-edit-plus-lora": _fal_mp(0.035, "fal-ai/qwen-image-edit-plus-lora"),
        "fal-ai/z-image/turbo": _fal_mp(0.005, "fal-ai/z-image/turbo"),
        "fal-ai/z-image/turbo/lora": _fal_mp(0.0085, "fal-ai/z-image/turbo/lora"),
        "fal-ai/esrgan": Price(
            per_gpu_second=0.00111, source="https://fal.ai/models/fal-ai/esrgan (per second)"
        ),
        "*": Price(per_megapixel=0.035, megapixel_step=1.0, source="fal default: the flux-lora rate"),
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
        "black-forest-labs/flux-fill-dev": Price(
            per_image=0.04, source="https://replicate.com/black-forest-labs/flux-fill-dev"
        ),
        "black-forest-labs/flux-1.1-pro-ultra": Price(
            per_image=0.06, source="https://replicate.com/black-forest-labs/flux-1.1-pro-ultra"
        ),
        "black-forest-labs/flux-kontext-pro": Price(
            per_image=0.04, source="https://replicate.com/black-forest-labs/flux-kontext-pro"
        ),
        "bytedance/seedream-4": Price(per_image=0.03, source="https://replicate.com/bytedance/seedream-4"),
        "qwen/qwen-image-edit-plus": Price(
            per_image=0.03, source="https://replicate.com/qwen/qwen-image-edit-plus"
        ),
        "prunaai/z-image-turbo": Price(per_image=0.005, source="https://replicate.com/prunaai/z-image-turbo"),
        "nightmareai/real-esrgan": Price(
            per_gpu_second=0.000225, source="https://replicate.com/pricing (T4)"
        ),
        "bytedance/flux-pulid": Price(
            per_gpu_second=0.000975, source="https://replicate.com/pricing (L40S, the model's hardware)"
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
