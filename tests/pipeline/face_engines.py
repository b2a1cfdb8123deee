"""A third-party-style engine for the pipeline tests: it answers with real photos from tests/fixtures/faces,
chosen per request, and records how many calls were in flight at once.

The tiny model draws no faces; this engine is how the face-based parts of the stages (distinctness, drift
gate, identity checks) meet real faces in tests.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from flenwheel.providers.base import (
    Capability,
    GenerationRequest,
    GenerationResult,
    ProviderContext,
    output_image,
)

ALL = frozenset(Capability)


@dataclass
class PhotoEngine:
    """Returns the photo `pick(request)` names, scaled to at most 320 px; optionally waits at a barrier so
    a test fails unless `barrier.parties` calls are in flight together."""

    id: str
    pick: Callable[[GenerationRequest], Path]
    capabilities: frozenset[Capability] = ALL
    allows_nsfw: bool = False
    price: float = 0.0
    barrier: threading.Barrier | None = None
    max_concurrency: int | None = None  # what the engine declares; flenwheel keeps to it
    calls: list[GenerationRequest] = field(default_factory=list)
    max_in_flight: int = 0
    _in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def paid(self) -> bool:
        """Bills only when the test gives it a price (a stand-in named "fal" is not a real paid engine)."""
        return self.price > 0

    def estimate_cost(self, request: GenerationRequest) -> float:
        return self.price * request.count

    def generate(self, request: GenerationRequest, ctx: ProviderContext) -> GenerationResult:
        with self._lock:
            self.calls.append(request)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            number = len(self.calls)
        try:
            ctx.remember_remote_id(f"{self.id}-{number}")
            if self.barrier is not None:
                self.barrier.wait()
            photo = Image.open(self.pick(request)).convert("RGB")
            photo.thumbnail((320, 320))
            buffer = io.BytesIO()
            photo.save(buffer, format="PNG")
            image = output_image(self.id, buffer.getvalue(), request.seed)
            return GenerationResult(
                images=(image,), provider=self.id, model="photos", cost_usd=self.price * request.count
            )
        finally:
            with self._lock:
                self._in_flight -= 1
