"""A third-party-style LoRA engine for the evaluation tests: it answers with real photos from
tests/fixtures/faces, chosen by the LoRA file's name, its strength and the prompt.

The tiny model draws no faces; this engine is how the evaluation meets real faces, so success rates and
identity numbers come from the real dlib model. It can also stop answering after N images, as an engine
that goes away mid-evaluation would.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from flenwheel.evaluation.prompts import model_card_prompts
from flenwheel.providers.base import (
    Capability,
    GenerationRequest,
    GenerationResult,
    ProviderContext,
    ProviderError,
    output_image,
)

PROMPT_KEY_BY_SEED = {prompt.seed: prompt.key for prompt in model_card_prompts("anyone")}


@dataclass
class CheckpointPhotoEngine:
    """`script(checkpoint file stem, strength, prompt key)` names the photo to return (at most 320 px)."""

    script: Callable[[str, float, str], Path]
    id: str = "photos"
    capabilities: frozenset[Capability] = frozenset({Capability.TEXT_TO_IMAGE, Capability.LORA})
    allows_nsfw: bool = True
    stop_after: int | None = None  # answer this many requests, then fail as an unreachable engine
    calls: list[GenerationRequest] = field(default_factory=list)

    def estimate_cost(self, request: GenerationRequest) -> float:
        return 0.0

    def generate(self, request: GenerationRequest, ctx: ProviderContext) -> GenerationResult:
        if self.stop_after is not None and len(self.calls) >= self.stop_after:
            raise ProviderError(self.id, "connection refused: the engine went away", transient=False)
        self.calls.append(request)
        [lora] = request.loras
        key = PROMPT_KEY_BY_SEED[request.seed]
        photo = Image.open(self.script(Path(lora.path).stem, lora.strength, key)).convert("RGB")
        photo.thumbnail((320, 320))
        buffer = io.BytesIO()
        photo.save(buffer, format="PNG")
        return GenerationResult(
            images=(output_image(self.id, buffer.getvalue(), request.seed),), provider=self.id, model="photos"
        )
