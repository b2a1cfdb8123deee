"""The ImageProvider contract: typed requests, results, and the context a provider reports through.

A provider is one engine (the local diffusers pipeline, a ComfyUI server, fal.ai, Replicate, the embedded
upscaler). It declares what it can do and whether NSFW work may be sent to it; the router (router.py) picks
one per request and never sends NSFW work to a provider with `allows_nsfw = False`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal, Protocol, runtime_checkable

from pydantic import Field, model_validator

from flenwheel.domain import Frozen
from flenwheel.errors import FlenwheelError
from flenwheel.store.run import RunContext, adapt_progress


class Capability(StrEnum):
    TEXT_TO_IMAGE = "text_to_image"
    IMAGE_TO_IMAGE = "image_to_image"
    INPAINT = "inpaint"
    UPSCALE = "upscale"
    IDENTITY_REFERENCE = "identity_reference"
    LORA = "lora"
    CONTROLNET = "controlnet"  # takes a control image (ControlImage) beside the prompt


class ControlType(StrEnum):
    """What a control image shows; each needs a ControlNet trained on it."""

    POSE = "pose"  # an OpenPose skeleton (poses/skeleton.py draws them)
    DEPTH = "depth"
    CANNY = "canny"


class ControlImage(Frozen):
    """A ControlNet condition: the image, its type, and its strength (0 ignores it, 1 is the ControlNet's
    trained strength; ComfyUI's ControlNetApplyAdvanced and diffusers' controlnet_conditioning_scale)."""

    image: bytes = Field(min_length=1)
    type: ControlType = ControlType.POSE
    strength: float = Field(default=1.0, ge=0.0, le=2.0)


class LoraRef(Frozen):
    """A LoRA to apply: a local .safetensors path or an https URL, at a strength."""

    path: str = Field(min_length=1)
    strength: float = Field(default=1.0, ge=-4.0, le=4.0)


class _Common(Frozen):
    prompt: str = Field(default="", max_length=4000)
    negative: str = Field(default="", max_length=4000)
    model: str | None = None  # provider-specific model id; None = the provider's default
    loras: tuple[LoraRef, ...] = ()
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    count: int = Field(default=1, ge=1, le=10)
    nsfw: bool = False  # the caller says the request is NSFW (the router also classifies the prompt)


class _Sized(_Common):
    width: int = Field(default=512, ge=64, le=2048, multiple_of=8)
    height: int = Field(default=512, ge=64, le=2048, multiple_of=8)
    steps: int = Field(default=20, ge=1, le=150)
    guidance: float = Field(default=7.0, ge=0.0, le=30.0)
    # The studio tier asked for: an engine that knows the model family (families.py) then takes the family's
    # own steps and guidance for that tier (Z-Image Turbo draft: 8 steps, CFG 1) over `steps` / `guidance`.
    tier: Literal["draft", "hq"] | None = None
    control: ControlImage | None = None  # steer the drawing (a pose skeleton…) where an engine can


class TextToImage(_Sized):
    kind: Literal["text_to_image"] = "text_to_image"


class ImageToImage(_Sized):
    """Edit a whole image: `strength` 0 keeps it, 1 redraws it."""

    kind: Literal["image_to_image"] = "image_to_image"
    image: bytes = Field(min_length=1)
    strength: float = Field(default=0.5, gt=0.0, le=1.0)


class Inpaint(_Sized):
    """Redraw only where `mask` is white; black pixels keep the original."""

    kind: Literal["inpaint"] = "inpaint"
    image: bytes = Field(min_length=1)
    mask: bytes = Field(min_length=1)
    strength: float = Field(default=1.0, gt=0.0, le=1.0)


class Upscale(_Common):
    kind: Literal["upscale"] = "upscale"
    image: bytes = Field(min_length=1)
    factor: Literal[2, 4] = 2


class IdentityReference(_Sized):
    """Text-to-image that keeps the face of the reference images (PuLID / IP-Adapter FaceID / InstantID)."""

    kind: Literal["identity_reference"] = "identity_reference"
    references: tuple[bytes, ...] = Field(min_length=1, max_length=8)
    identity_strength: float = Field(default=0.8, ge=0.0, le=2.0)


GenerationRequest = Annotated[
    TextToImage | ImageToImage | Inpaint | Upscale | IdentityReference, Field(discriminator="kind")
]

REQUIRED_CAPABILITY: dict[str, Capability] = {
    "text_to_image": Capability.TEXT_TO_IMAGE,
    "image_to_image": Capability.IMAGE_TO_IMAGE,
    "inpaint": Capability.INPAINT,
    "upscale": Capability.UPSCALE,
    "identity_reference": Capability.IDENTITY_REFERENCE,
}


def required_capabilities(request: GenerationRequest) -> frozenset[Capability]:
    needed = {REQUIRED_CAPABILITY[request.kind]}
    if request.loras:
        needed.add(Capability.LORA)
    if getattr(request, "control", None) is not None:
        needed.add(Capability.CONTROLNET)
    return frozenset(needed)


class GeneratedImage(Frozen):
    data: bytes  # PNG
    width: int
    height: int
    seed: int | None = None


class GenerationResult(Frozen):
    images: tuple[GeneratedImage, ...]
    provider: str
    model: str
    cost_usd: float = 0.0
    remote_id: str | None = None
    engine_seconds: float | None = None  # execution time the engine itself reported, when it does

    @model_validator(mode="after")
    def _has_images(self) -> GenerationResult:
        if not self.images:
            raise ValueError("a generation result needs at least one image")
        return self


# The one run context (store/run.py) is what every engine reports through: `progress(done, total)`,
# `cancelled()`, `remember_remote_id(id)` before waiting, `known_remote_id()` to resume.
ProviderContext = RunContext


class LocalContext(RunContext):
    """A run with no database, for calling one engine directly (scripts, engine tests): progress to a
    callback taking (done, total), remote ids in memory."""

    def __init__(self, on_progress: object = None) -> None:
        super().__init__(on_progress=adapt_progress(on_progress if callable(on_progress) else None))


@runtime_checkable
class ImageProvider(Protocol):
    id: str
    capabilities: frozenset[Capability]
    allows_nsfw: bool  # False for every provider that sends work off this user's own machines

    def estimate_cost(self, request: GenerationRequest) -> float: ...

    def generate(self, request: GenerationRequest, ctx: ProviderContext) -> GenerationResult: ...


def output_image(provider: str, data: bytes, seed: int | None) -> GeneratedImage:
    """An engine's output bytes (PNG, JPEG, WebP…) checked and normalised to PNG; unreadable is permanent."""
    from flenwheel.errors import ImageRejected
    from flenwheel.images import decode_image, encode_png

    try:
        image = decode_image(data).image
    except ImageRejected as exc:
        raise ProviderError(
            provider, f"returned an image flenwheel cannot read: {exc.detail}", transient=False
        ) from exc
    return GeneratedImage(data=encode_png(image), width=image.width, height=image.height, seed=seed)


class ProviderError(FlenwheelError):
    """An engine failed. `transient` errors (429, 5xx, timeouts) may be retried or routed elsewhere."""

    def __init__(self, provider: str, message: str, transient: bool) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.transient = transient


class Cancelled(FlenwheelError):
    """The engine stopped because the run was cancelled, after sending its own remote cancel.
    `billed_usd`: what the remote side billed for the cancelled work, when the engine knows it."""

    def __init__(self, provider: str, billed_usd: float | None = None) -> None:
        super().__init__(f"{provider}: cancelled by the user")
        self.provider = provider
        self.billed_usd = billed_usd
