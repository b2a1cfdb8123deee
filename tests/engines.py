"""Test engines: third-party-style providers (not flenwheel code) that record calls and fail on demand.

They stand in only where an engine's behaviour must be scripted (transient failures, prices); the real
engines are tested against real servers and protocol servers in tests/providers.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from PIL import Image

from flenwheel.providers.base import (
    Capability,
    GeneratedImage,
    GenerationRequest,
    GenerationResult,
    ProviderContext,
    ProviderError,
)

ALL = frozenset(Capability)


def png(color: tuple[int, int, int] = (120, 30, 200), size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class ScriptedEngine:
    """Fails with the scripted errors first (transient or not), then succeeds; records every call."""

    id: str
    capabilities: frozenset[Capability] = ALL
    allows_nsfw: bool = False
    price: float = 0.0
    failures: list[ProviderError] = field(default_factory=list)
    calls: list[GenerationRequest] = field(default_factory=list)
    accept_before_failing: bool = False  # True: the engine took the job (remote id kept), then failed

    @property
    def paid(self) -> bool:
        return self.price > 0

    def estimate_cost(self, request: GenerationRequest) -> float:
        return self.price * request.count

    def generate(self, request: GenerationRequest, ctx: ProviderContext) -> GenerationResult:
        self.calls.append(request)
        if self.failures and not self.accept_before_failing:
            raise self.failures.pop(0)  # refused at submission: nothing runs, nothing bills
        ctx.remember_remote_id(f"{self.id}-{len(self.calls)}")
        if self.failures:
            raise self.failures.pop(0)
        images = tuple(
            GeneratedImage(
                data=png((len(self.calls) * 40 % 255, index * 50 % 255, 10)),
                width=64,
                height=64,
                seed=request.seed,
            )
            for index in range(request.count)
        )
        return GenerationResult(
            images=images, provider=self.id, model="scripted", cost_usd=self.price * request.count
        )


def transient(engine: str, what: str = "HTTP 503 Service Unavailable") -> ProviderError:
    return ProviderError(engine, what, transient=True)


def permanent(engine: str, what: str = "HTTP 422: prompt is required") -> ProviderError:
    return ProviderError(engine, what, transient=False)
