"""fal.ai through its queue API: submit, remember the request id, poll, fetch, copy the images — resumable.

The protocol, its errors and retries live in remote/fal.py (shared with the fal trainer). A cancel while
waiting cancels the request on fal; so does the time limit (`timeout_s`, or `max_billed_seconds` for an
endpoint billed per GPU-second), which is what `estimate_cost` assumes: billed ≤ estimate.
"""

from __future__ import annotations

import base64
import io
import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fal_client
from PIL import Image

from flenwheel.config import Settings, secret
from flenwheel.errors import InvalidInput
from flenwheel.families import FAMILIES
from flenwheel.images import image_mime_type
from flenwheel.providers import catalogue
from flenwheel.providers.base import (
    Cancelled,
    Capability,
    GeneratedImage,
    GenerationRequest,
    GenerationResult,
    IdentityReference,
    ImageToImage,
    Inpaint,
    ProviderContext,
    ProviderError,
    TextToImage,
    Upscale,
    output_image,
)
from flenwheel.providers.pricing import Price, PriceTable
from flenwheel.remote.errors import RemoteCancelled, translated
from flenwheel.remote.fal import FalClient, FalStatus
from flenwheel.remote.waiting import CANCEL_GRACE_S

log = logging.getLogger(__name__)

MISSING_KEY = "FAL_KEY is not set: export it or pick --provider local"
TEXT_TO_IMAGE = "fal-ai/flux/dev"
TEXT_TO_IMAGE_LORA = "fal-ai/flux-lora"
IMAGE_TO_IMAGE = "fal-ai/flux/dev/image-to-image"
IMAGE_TO_IMAGE_LORA = "fal-ai/flux-lora/image-to-image"
INPAINT = "fal-ai/flux-lora/inpainting"
UPSCALE = "fal-ai/esrgan"
IDENTITY = "fal-ai/flux-pulid"
_TQDM = re.compile(r"\|\s*(\d+)/(\d+)\s*\[")  # a tqdm bar in the runner's logs: " 35%|███▌  | 7/20 [00:01<…"


def endpoint_for(request: GenerationRequest) -> str:
    """The fal endpoint for a request: its own `model` (an endpoint, or a model family such as z-image-turbo:
    that family's endpoint for the request's kind), else the FLUX family member for its kind."""
    if request.model in FAMILIES:
        return catalogue.for_family("fal", request.model, request.kind, len(request.loras)).id
    if request.model:
        entry = catalogue.CATALOGUE.get(("fal", request.model))
        if entry is None or request.kind in entry.kinds:
            return request.model
        # A pipeline mode the model cannot serve (the studio's identity mode with a text model): the kind's
        # own FLUX endpoint runs it, as before the catalogue.
        log.info("%s does not do %s; using fal's FLUX endpoint for it", request.model, request.kind)
    if isinstance(request, TextToImage):
        return TEXT_TO_IMAGE_LORA if request.loras else TEXT_TO_IMAGE
    if isinstance(request, ImageToImage):
        return IMAGE_TO_IMAGE_LORA if request.loras else IMAGE_TO_IMAGE
    if isinstance(request, Inpaint):
        return INPAINT
    if isinstance(request, Upscale):
        return UPSCALE
    return IDENTITY


class FalProvider:
    """FLUX text-to-image, image-to-image, inpainting with LoRAs, ESRGAN upscaling and PuLID on fal.ai."""

    id = "fal"
    # all but ControlNet (its endpoints here take no control image): FLUX (+ LoRAs), FLUX inpainting, ESRGAN, PuLID
    capabilities = frozenset(Capability) - {Capability.CONTROLNET}
    allows_nsfw = False
    paid = True  # fal bills every request: reserve `estimate_cost` before `generate`

    def __init__(
        self,
        key: str | None,
        queue_url: str = "https://queue.fal.run",
        rest_url: str = "https://rest.fal.ai",
        prices: PriceTable | None = None,
        poll_interval: float = 1.0,
        timeout_s: float = 1800.0,
        max_billed_seconds: float = 120.0,
        inline_limit: int = 256 * 1024,
        sleep: Callable[[float], None] = time.sleep,  # between retries (Retry-After) and polls
    ) -> None:
        if not key or not key.strip():
            raise ProviderError(self.id, MISSING_KEY, transient=False)
        self.client = FalClient(
            key, queue_url=queue_url, rest_url=rest_url, sleep=sleep, transfer_timeout_s=300.0
        )
        self.prices = prices or PriceTable.load()
        self.poll_interval = poll_interval
        self.timeout_s = timeout_s  # the longest wait on one request before it is cancelled on fal
        self.max_billed_seconds = max_billed_seconds  # the same, for endpoints billed per GPU-second
        # Inputs up to this size travel as data URIs, larger ones through fal storage.
        self.inline_limit = inline_limit
        self._uploaded: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> FalProvider | None:
        """The provider when FAL_KEY is set, else None (fal is then simply not offered)."""
        if not secret(settings.fal_key):
            return None
        return cls(
            secret(settings.fal_key),
            queue_url=settings.fal_queue_url,
            rest_url=settings.fal_rest_url,
            prices=PriceTable.load(settings.prices),
            timeout_s=settings.remote_timeout_s,
            max_billed_seconds=settings.remote_max_billed_seconds,
        )

    # -- cost ------------------------------------------------------------------------------------------------
    def estimate_cost(self, request: GenerationRequest) -> float:
        """The most this request can cost in USD: per image/megapixel as listed, and for an endpoint billed
        per GPU-second, the rate × the seconds `generate` lets it run before cancelling it (+ CANCEL_GRACE_S)."""
        self._entry(request)  # an unknown endpoint is refused before anything is reserved
        price = self.prices.price(self.id, catalogue.raw_id(endpoint_for(request)))
        seconds = self._limit_s(price) + CANCEL_GRACE_S if price.per_second else 0.0
        if isinstance(request, Upscale):
            try:
                with Image.open(io.BytesIO(request.image)) as image:  # reads the header only
                    width, height = image.size
            except OSError:
                raise self._permanent("the image to upscale is not an image flenwheel can read") from None
            return self._positive(
                price.cost(1, width * request.factor, height * request.factor, seconds), request
            )
        return self._positive(price.cost(request.count, request.width, request.height, seconds), request)

    def _positive(self, estimate: float, request: GenerationRequest) -> float:
        """A paid engine never estimates $0: nothing would be reserved for what it bills."""
        if estimate <= 0:
            raise self._permanent(
                f"the price of {endpoint_for(request)} is $0, but {self.id} bills every request: give it its real "
                "price in the FLENWHEEL_PRICES file"
            )
        return estimate

    def _limit_s(self, price: Price) -> float:
        return min(self.timeout_s, self.max_billed_seconds) if price.per_second else self.timeout_s

    # -- the job ---------------------------------------------------------------------------------------------
    def _entry(self, request: GenerationRequest) -> catalogue.Endpoint | None:
        """The catalogue entry of the request's endpoint (None for `raw:`); a permanent error for an unknown
        endpoint or a kind the endpoint does not do."""
        try:
            entry = catalogue.endpoint("fal", endpoint_for(request))
            if entry is not None:
                catalogue.refuse_kind(entry, request.kind)
        except InvalidInput as exc:
            raise self._permanent(str(exc)) from None
        return entry

    def payload(self, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        """(endpoint, the arguments it is sent): the generic arguments fitted to the endpoint's own schema."""
        entry = self._entry(request)
        arguments = self._arguments(request)
        if entry is None:
            return catalogue.raw_id(endpoint_for(request)), arguments
        try:
            fitted, dropped = catalogue.fit(entry, arguments)
            fitted = catalogue.apply_tier(entry, fitted, getattr(request, "tier", None))
        except InvalidInput as exc:
            raise self._permanent(str(exc)) from None
        if dropped:
            log.info("fal %s has no input for %s; not sent", entry.id, ", ".join(dropped))
        return entry.id, fitted

    def generate(self, request: GenerationRequest, ctx: ProviderContext) -> GenerationResult:
        self._entry(request)
        endpoint = catalogue.raw_id(endpoint_for(request))
        price = self.prices.price(self.id, endpoint)
        self._refuse_unsupported(request, endpoint)
        with translated(self._error):
            request_id = self._resume(endpoint, ctx)
            if request_id is None:
                if ctx.cancelled():
                    raise Cancelled(self.id, billed_usd=0.0)  # nothing was sent
                request_id = self.client.submit(*self.payload(request))
                ctx.remember_remote_id(request_id)  # before any waiting: a restart resumes, never re-pays
            completed = self._wait(endpoint, request_id, price, ctx)
            output = self.client.result(endpoint, request_id)  # a failed request answers its error here
            images = self._collect(output, request_id)
        engine_seconds = _engine_seconds(completed, output)
        first = images[0]
        return GenerationResult(
            images=tuple(images),
            provider=self.id,
            model=endpoint,
            cost_usd=price.cost(len(images), first.width, first.height, engine_seconds or 0.0),
            remote_id=request_id,
            engine_seconds=engine_seconds,
        )

    def _refuse_unsupported(self, request: GenerationRequest, endpoint: str) -> None:
        if request.loras and isinstance(request, Upscale | IdentityReference):
            raise self._permanent(f"{endpoint} takes no LoRAs: drop them or use a LoRA-mode request")
        if isinstance(request, IdentityReference) and request.count != 1:
            raise self._permanent(f"{endpoint} makes one image per request: ask for count=1")
        if request.negative and not isinstance(request, IdentityReference | Upscale):
            log.warning("fal %s has no negative prompt; it is ignored", endpoint)

    def _resume(self, endpoint: str, ctx: ProviderContext) -> str | None:
        """The remembered request when fal still has it and it was not cancelled, else None (submit anew)."""
        known = ctx.known_remote_id()
        if not known:
            return None
        status = self.client.status(endpoint, known)
        if status is None:  # fal no longer knows it, so nothing is running or billed: start over
            log.warning("fal request %s is unknown to fal; submitting again", known)
            return None
        if status.done and status.error and "cancel" in status.error.lower():
            log.warning("fal request %s was cancelled; submitting again", known)
            return None
        return known

    def _wait(self, endpoint: str, request_id: str, price: Price, ctx: ProviderContext) -> FalStatus:
        limit = self._limit_s(price)
        hint = (
            "raise FLENWHEEL_REMOTE_MAX_BILLED_SECONDS (the estimate grows with it)"
            if price.per_second
            else "raise FLENWHEEL_REMOTE_TIMEOUT_S"
        )
        try:
            return self.client.wait(
                endpoint,
                request_id,
                cancelled=ctx.cancelled,
                on_status=lambda status: _report_steps(status.logs, ctx),
                poll_interval=self.poll_interval,
                max_seconds=limit,
                limit_hint=hint,
            )
        except RemoteCancelled as exc:
            # Billed per output: a cancelled job made none and costs nothing. Billed per GPU-second: the
            # bill is unknown here, so the worst-case reservation stays (the call is kept as abandoned).
            raise Cancelled(self.id, billed_usd=None if price.per_second else 0.0) from exc

    # -- inputs ----------------------------------------------------------------------------------------------
    def _arguments(self, request: GenerationRequest) -> dict[str, Any]:
        if isinstance(request, Upscale):
            return {
                "image_url": self._image_url(request.image),
                "scale": request.factor,
                "model": "RealESRGAN_x4plus" if request.factor == 4 else "RealESRGAN_x2plus",
                "output_format": "png",
            }
        arguments: dict[str, Any] = {
            "prompt": request.prompt,
            "image_size": {"width": request.width, "height": request.height},
            "num_inference_steps": request.steps,
            "guidance_scale": request.guidance,
            "enable_safety_checker": True,
            "output_format": "png",
        }
        if request.seed is not None:
            arguments["seed"] = request.seed
        if isinstance(request, IdentityReference):
            if len(request.references) > 1:
                log.info("fal PuLID takes one reference; the first of %d is sent", len(request.references))
            arguments["reference_image_url"] = self._image_url(request.references[0])
            arguments["id_weight"] = request.identity_strength
            if request.negative:
                arguments["negative_prompt"] = request.negative
            return arguments
        arguments["num_images"] = request.count
        if request.loras:
            arguments["loras"] = [
                {"path": self._lora_url(lora.path), "scale": lora.strength} for lora in request.loras
            ]
        if isinstance(request, ImageToImage | Inpaint):
            arguments["image_url"] = self._image_url(request.image)
            arguments["strength"] = request.strength
        if isinstance(request, Inpaint):
            arguments["mask_url"] = self._image_url(request.mask)
        return arguments

    def _image_url(self, data: bytes) -> str:
        content_type = image_mime_type(data)
        if len(data) <= self.inline_limit:
            return fal_client.encode(data, content_type)
        suffix = content_type.rsplit("/", 1)[-1]
        return self._upload(data, content_type, f"input.{suffix}")

    def _lora_url(self, path: str) -> str:
        if path.startswith(("https://", "http://")):
            return path
        file = Path(path).expanduser()
        try:
            stat = file.stat()
        except OSError:
            raise self._permanent(
                f"LoRA file {path} not found: give an existing .safetensors or a URL"
            ) from None
        key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key in self._uploaded:
                return self._uploaded[key]
        with file.open("rb") as handle:
            url = self._upload(handle.read(), "application/octet-stream", file.name)
        with self._lock:
            self._uploaded[key] = url
        return url

    def _upload(self, data: bytes, content_type: str, file_name: str) -> str:
        with translated(self._error):
            return self.client.upload(data, content_type, file_name)

    # -- outputs ---------------------------------------------------------------------------------------------
    def _collect(self, output: dict[str, Any], request_id: str) -> list[GeneratedImage]:
        files = output.get("images") or ([output["image"]] if output.get("image") else [])
        flagged = output.get("has_nsfw_concepts") or []
        seed = output.get("seed")
        kept = [file for index, file in enumerate(files) if not (index < len(flagged) and flagged[index])]
        if files and not kept:
            raise self._permanent(
                "fal's safety checker blanked every image (has_nsfw_concepts): change the prompt"
            )
        if not kept:
            raise self._permanent(f"request {request_id} finished without an image: {str(output)[:200]}")
        return [self._download(str(file["url"]), seed if isinstance(seed, int) else None) for file in kept]

    def _download(self, url: str, seed: int | None) -> GeneratedImage:
        if url.startswith("data:"):
            data = base64.b64decode(url.partition(",")[2])
        else:
            data = self.client.download(url)
        return output_image(self.id, data, seed)

    # -- errors ----------------------------------------------------------------------------------------------
    def _permanent(self, message: str) -> ProviderError:
        return ProviderError(self.id, message, transient=False)

    def _error(self, message: str, transient: bool) -> ProviderError:
        return ProviderError(self.id, message, transient=transient)


def _report_steps(logs: tuple[dict[str, Any], ...], ctx: ProviderContext) -> None:
    for entry in reversed(logs or []):
        found = _TQDM.search(str(entry.get("message", "")))
        if found:
            ctx.progress(int(found.group(1)), int(found.group(2)))
            return


def _engine_seconds(completed: FalStatus, output: dict[str, Any]) -> float | None:
    seconds = completed.metrics.get("inference_time")
    if seconds is None:
        seconds = (output.get("timings") or {}).get("inference")
    return float(seconds) if isinstance(seconds, int | float) else None
