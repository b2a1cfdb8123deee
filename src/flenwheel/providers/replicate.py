"""Replicate through its predictions API: create, remember the prediction id, poll, copy every file out at once.

The protocol, its errors and retries live in remote/replicate.py (shared with the Replicate trainer).
Outputs on replicate.delivery expire after an hour, so generate() downloads them before it returns. A cancel
while waiting cancels the prediction on Replicate; so does the time limit (`timeout_s`, or
`max_billed_seconds` for a model billed per GPU-second), which is what `estimate_cost` assumes.
"""

from __future__ import annotations

import base64
import logging
import math
import re
import time
from collections.abc import Callable
from typing import Any

from replicate.prediction import Prediction

from flenwheel.config import Settings, secret
from flenwheel.errors import InvalidInput
from flenwheel.families import FAMILIES
from flenwheel.images import image_mime_type
from flenwheel.providers import catalogue
from flenwheel.providers.base import (
    Cancelled,
    Capability,
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
from flenwheel.remote.replicate import ReplicateClient
from flenwheel.remote.waiting import CANCEL_GRACE_S

log = logging.getLogger(__name__)

MISSING_TOKEN = "REPLICATE_API_TOKEN is not set: export it or pick --provider local"
TEXT_TO_IMAGE = "black-forest-labs/flux-dev"
LORA = "black-forest-labs/flux-dev-lora"
INPAINT = "black-forest-labs/flux-fill-dev"
UPSCALE = "nightmareai/real-esrgan"
IDENTITY = "bytedance/flux-pulid"
ASPECT_RATIOS = ("1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21")
_SEED = re.compile(r"Using seed:\s*(\d+)")


def model_for(request: GenerationRequest) -> str:
    """The Replicate model a request runs on: the request's own `model`, else the FLUX family member for its kind."""
    if request.model in FAMILIES:
        return catalogue.for_family("replicate", request.model, request.kind, len(request.loras)).id
    if request.model:
        entry = catalogue.CATALOGUE.get(("replicate", request.model.split(":")[0]))
        if entry is None or request.kind in entry.kinds:
            return request.model
        # A pipeline mode the model cannot serve (the studio's identity mode with a text model): the kind's
        # own FLUX model runs it, as before the catalogue.
        log.info("%s does not do %s; using Replicate's FLUX model for it", request.model, request.kind)
    if isinstance(request, TextToImage | ImageToImage):
        return LORA if request.loras else TEXT_TO_IMAGE
    if isinstance(request, Inpaint):
        return INPAINT
    if isinstance(request, Upscale):
        return UPSCALE
    return IDENTITY


def aspect_ratio(width: int, height: int) -> str:
    """The FLUX aspect ratio nearest to width:height (the official FLUX models take a ratio, not a size)."""

    def distance(ratio: str) -> float:
        across, down = (int(part) for part in ratio.split(":"))
        return abs(math.log(width / height) - math.log(across / down))

    return min(ASPECT_RATIOS, key=distance)


class ReplicateProvider:
    """FLUX dev (+ one LoRA), FLUX Fill inpainting, Real-ESRGAN and PuLID on Replicate."""

    id = "replicate"
    # all but ControlNet (its endpoints here take no control image): FLUX dev (+ one LoRA), FLUX Fill, Real-ESRGAN, PuLID
    capabilities = frozenset(Capability) - {Capability.CONTROLNET}
    allows_nsfw = False

    paid = True  # Replicate bills every prediction: reserve `estimate_cost` before `generate`

    def __init__(
        self,
        token: str | None,
        base_url: str = "https://api.replicate.com/v1",
        prices: PriceTable | None = None,
        poll_interval: float = 1.0,
        timeout_s: float = 1800.0,
        max_billed_seconds: float = 120.0,
        inline_limit: int = 256 * 1024,
        sleep: Callable[[float], None] = time.sleep,  # between retries (Retry-After) and polls
    ) -> None:
        if not token or not token.strip():
            raise ProviderError(self.id, MISSING_TOKEN, transient=False)
        self.client = ReplicateClient(
            token, base_url=base_url, sleep=sleep, request_timeout_s=60.0, transfer_timeout_s=300.0
        )
        self.prices = prices or PriceTable.load()
        self.poll_interval = poll_interval
        self.timeout_s = timeout_s  # the longest wait on one prediction before it is cancelled
        self.max_billed_seconds = max_billed_seconds  # the same, for models billed per GPU-second
        # Inputs up to this size travel as data URIs, larger ones through /v1/files.
        self.inline_limit = inline_limit

    @classmethod
    def from_settings(cls, settings: Settings) -> ReplicateProvider | None:
        """The provider when REPLICATE_API_TOKEN is set, else None (Replicate is then simply not offered)."""
        if not secret(settings.replicate_api_token):
            return None
        return cls(
            secret(settings.replicate_api_token),
            base_url=settings.replicate_base_url,
            prices=PriceTable.load(settings.prices),
            timeout_s=settings.remote_timeout_s,
            max_billed_seconds=settings.remote_max_billed_seconds,
        )

    def estimate_cost(self, request: GenerationRequest) -> float:
        """The most this request can cost in USD: per image as listed, and for a model billed per GPU-second,
        the rate × the seconds `generate` lets it run before cancelling it."""
        price = self._price(request)
        seconds = self._limit_s(price) + CANCEL_GRACE_S if price.per_second else 0.0
        if isinstance(request, Upscale):
            return self._positive(price.cost(1, 0, 0, seconds), request)
        return self._positive(price.cost(request.count, request.width, request.height, seconds), request)

    def _price(self, request: GenerationRequest) -> Price:
        self._entry(request)  # an unknown model is refused before anything is reserved
        return self.prices.price(self.id, catalogue.raw_id(model_for(request)).split(":")[0])

    def _entry(self, request: GenerationRequest) -> catalogue.Endpoint | None:
        """The catalogue entry of the request's model (None for `raw:`); a permanent error for an unknown
        model or a kind it does not do."""
        try:
            entry = catalogue.endpoint("replicate", model_for(request))
            if entry is not None:
                catalogue.refuse_kind(entry, request.kind)
        except InvalidInput as exc:
            raise self._permanent(str(exc)) from None
        return entry

    def payload(self, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        """(model, the input it is sent): the generic input fitted to the model's own schema."""
        entry = self._entry(request)
        fields = self._input(request)
        model = catalogue.raw_id(model_for(request))
        if entry is None:
            return model, fields
        try:
            fitted, dropped = catalogue.fit(entry, fields)
            fitted = catalogue.apply_tier(entry, fitted, getattr(request, "tier", None))
        except InvalidInput as exc:
            raise self._permanent(str(exc)) from None
        if dropped:
            log.info("Replicate %s has no input for %s; not sent", entry.id, ", ".join(dropped))
        return model, fitted

    def _positive(self, estimate: float, request: GenerationRequest) -> float:
        """A paid engine never estimates $0: nothing would be reserved for what it bills."""
        if estimate <= 0:
            raise self._permanent(
                f"the price of {model_for(request)} is $0, but {self.id} bills every request: give it its real "
                "price in the FLENWHEEL_PRICES file"
            )
        return estimate

    def _limit_s(self, price: Price) -> float:
        return min(self.timeout_s, self.max_billed_seconds) if price.per_second else self.timeout_s

    # -- the job ---------------------------------------------------------------------------------------------
    def generate(self, request: GenerationRequest, ctx: ProviderContext) -> GenerationResult:
        model = catalogue.raw_id(model_for(request))
        price = self._price(request)
        self._refuse_unsupported(request, model)
        with translated(self._error):
            prediction = self._resume(ctx)
            if prediction is None:
                if ctx.cancelled():
                    raise Cancelled(self.id, billed_usd=0.0)  # nothing was sent
                prediction = self.client.create_prediction(*self.payload(request))
                ctx.remember_remote_id(prediction.id)  # before any waiting: a restart resumes, never re-pays
            prediction = self._wait(prediction, price, ctx)
            if prediction.status == "failed":
                raise self._permanent(f"prediction {prediction.id} failed: {prediction.error}")
            if prediction.status == "canceled":
                raise self._permanent(f"prediction {prediction.id} was canceled on Replicate")
            seed = request.seed if not isinstance(request, Upscale) else None
            if seed is None and (found := _SEED.search(prediction.logs or "")):
                seed = int(found.group(1))
            images = [
                output_image(self.id, self.client.download(url), seed)
                for url in _output_urls(prediction.output)
            ]
        if not images:
            raise self._permanent(f"prediction {prediction.id} finished without an image")
        seconds = (prediction.metrics or {}).get("predict_time")
        engine_seconds = float(seconds) if isinstance(seconds, int | float) else None
        return GenerationResult(
            images=tuple(images),
            provider=self.id,
            model=model,
            cost_usd=price.cost(len(images), images[0].width, images[0].height, engine_seconds or 0.0),
            remote_id=prediction.id,
            engine_seconds=engine_seconds,
        )

    def _refuse_unsupported(self, request: GenerationRequest, model: str) -> None:
        if request.loras and isinstance(request, Upscale | IdentityReference):
            raise self._permanent(f"{model} takes no LoRAs: drop them or use a LoRA-mode request")
        if len(request.loras) > 1:
            raise self._permanent(f"{model} applies one LoRA; this request has {len(request.loras)}")
        for lora in request.loras:
            if not lora.path.startswith(("https://", "http://")):
                raise self._permanent(
                    f"Replicate loads LoRA weights from a URL (Hugging Face, CivitAI, a Replicate model or an https "
                    f".safetensors), not from {lora.path}: publish the file and pass its URL"
                )

    def _resume(self, ctx: ProviderContext) -> Prediction | None:
        """The remembered prediction unless Replicate forgot it or it was canceled (then: create anew)."""
        known = ctx.known_remote_id()
        if not known:
            return None
        prediction = self.client.prediction(known)
        if prediction is None:  # Replicate does not know it, so nothing is running or billed: start over
            log.warning("Replicate prediction %s is unknown; creating it again", known)
        elif prediction.status == "canceled":
            log.warning("Replicate prediction %s was canceled; creating it again", known)
            return None
        return prediction

    def _wait(self, prediction: Prediction, price: Price, ctx: ProviderContext) -> Prediction:
        def report(state: Prediction) -> None:
            if (progress := state.progress) is not None:
                ctx.progress(progress.current, progress.total)

        hint = (
            "raise FLENWHEEL_REMOTE_MAX_BILLED_SECONDS (the estimate grows with it)"
            if price.per_second
            else "raise FLENWHEEL_REMOTE_TIMEOUT_S"
        )
        try:
            return self.client.wait(
                prediction,
                cancelled=ctx.cancelled,
                on_update=report,
                poll_interval=self.poll_interval,
                max_seconds=self._limit_s(price),
                limit_hint=hint,
            )
        except RemoteCancelled as exc:
            # Billed per output: a cancelled job made none and costs nothing. Billed per GPU-second: the
            # bill is unknown here, so the worst-case reservation stays (the call is kept as abandoned).
            raise Cancelled(self.id, billed_usd=None if price.per_second else 0.0) from exc

    # -- inputs ----------------------------------------------------------------------------------------------
    def _input(self, request: GenerationRequest) -> dict[str, Any]:
        if isinstance(request, Upscale):
            return {"image": self._file_url(request.image), "scale": request.factor, "face_enhance": False}
        if isinstance(request, IdentityReference):
            fields: dict[str, Any] = {
                "prompt": request.prompt,
                "main_face_image": self._file_url(request.references[0]),
                "width": request.width,
                "height": request.height,
                "num_steps": request.steps,
                "guidance_scale": request.guidance,
                "id_weight": request.identity_strength,
                "num_outputs": request.count,
                "output_format": "png",
            }
            if request.negative:
                fields["negative_prompt"] = request.negative
        else:
            fields = {
                "prompt": request.prompt,
                "num_outputs": request.count,
                "num_inference_steps": request.steps,
                "guidance": request.guidance,
                "output_format": "png",
            }
            if request.negative:
                log.warning("Replicate FLUX models have no negative prompt; it is ignored")
        if request.seed is not None:
            fields["seed"] = request.seed
        if isinstance(request, TextToImage | ImageToImage):
            fields["aspect_ratio"] = aspect_ratio(request.width, request.height)
            fields["width"], fields["height"] = request.width, request.height  # for models sized in pixels
            fields["megapixels"] = "0.25" if request.width * request.height <= 400_000 else "1"
        if isinstance(request, ImageToImage):
            fields["image"] = self._file_url(request.image)
            fields["prompt_strength"] = request.strength
        if isinstance(request, Inpaint):
            fields["image"] = self._file_url(request.image)
            fields["mask"] = self._file_url(request.mask)
        for lora in request.loras:
            fields["lora_weights"] = lora.path
            fields["lora_scale"] = lora.strength
        return fields

    def _file_url(self, data: bytes) -> str:
        content_type = image_mime_type(data)
        if len(data) <= self.inline_limit:
            return f"data:{content_type};base64,{base64.b64encode(data).decode()}"
        suffix = content_type.rsplit("/", 1)[-1]
        with translated(self._error):
            return self.client.upload(data, f"input.{suffix}", content_type)

    # -- errors ----------------------------------------------------------------------------------------------
    def _permanent(self, message: str) -> ProviderError:
        return ProviderError(self.id, message, transient=False)

    def _error(self, message: str, transient: bool) -> ProviderError:
        return ProviderError(self.id, message, transient=transient)


def _output_urls(output: Any) -> list[str]:
    """Image models answer one URL or a list of URLs."""
    if isinstance(output, str):
        return [output]
    if isinstance(output, list):
        return [str(item) for item in output if isinstance(item, str)]
    return []
