"""Replicate through its predictions API: create, remember the prediction id, poll, copy every file out at once.

Protocol: https://replicate.com/docs/reference/http — POST /v1/models/{owner}/{name}/predictions (official
models) or POST /v1/predictions with a `version`, GET /v1/predictions/{id}, POST /v1/predictions/{id}/cancel.
Outputs on replicate.delivery expire after an hour, so generate() downloads them before it returns.
`Prefer: wait` is never sent: the prediction id must be remembered before any waiting.
Webhooks are signed as https://replicate.com/docs/topics/webhooks/verify-webhook describes (verify_webhook).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import logging
import math
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx
import replicate
from replicate.exceptions import ReplicateError
from replicate.identifier import ModelVersionIdentifier
from replicate.prediction import Prediction

from flenwheel.config import Settings, secret
from flenwheel.errors import FlenwheelError
from flenwheel.images import image_mime_type
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
from flenwheel.providers.pricing import PriceTable

log = logging.getLogger(__name__)

MISSING_TOKEN = "REPLICATE_API_TOKEN is not set: export it or pick --provider local"
TEXT_TO_IMAGE = "black-forest-labs/flux-dev"
LORA = "black-forest-labs/flux-dev-lora"
INPAINT = "black-forest-labs/flux-fill-dev"
UPSCALE = "nightmareai/real-esrgan"
IDENTITY = "bytedance/flux-pulid"
# Official models run by name; any other model runs by version (its latest one unless `owner/name:version`).
OFFICIAL = frozenset(
    {TEXT_TO_IMAGE, LORA, INPAINT, "black-forest-labs/flux-schnell", "black-forest-labs/flux-fill-pro"}
)
ASPECT_RATIOS = ("1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21")
TRANSIENT_STATUS = frozenset({408, 409, 425, 429})
FINISHED = frozenset({"succeeded", "failed", "canceled"})
_SEED = re.compile(r"Using seed:\s*(\d+)")


class WebhookRejected(FlenwheelError):
    """A webhook request did not come from Replicate (or was altered, or replayed)."""


def verify_webhook(
    headers: Mapping[str, str],
    body: bytes | str,
    secret: str,
    tolerance_s: float = 300,
    now: float | None = None,
) -> None:
    """Check Replicate's webhook signature; raise `WebhookRejected` saying why when it does not hold.

    The signed content is `{webhook-id}.{webhook-timestamp}.{raw body}`, signed with HMAC-SHA256 under the
    base64 key after `whsec_`; `webhook-signature` lists `v1,<base64>` signatures separated by spaces.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    webhook_id = lowered.get("webhook-id")
    timestamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not webhook_id or not timestamp or not signatures:
        raise WebhookRejected("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise WebhookRejected(f"webhook-timestamp {timestamp!r} is not seconds since the epoch") from None
    age = (time.time() if now is None else now) - sent_at
    if abs(age) > tolerance_s:
        raise WebhookRejected(
            f"webhook timestamp is {age:.0f} s off (tolerance {tolerance_s:.0f} s): a replay?"
        )
    if not secret.startswith("whsec_"):
        raise WebhookRejected(
            "the signing secret must be the whsec_… key from GET /v1/webhooks/default/secret"
        )
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except binascii.Error:
        raise WebhookRejected("the signing secret after whsec_ is not base64") from None
    payload = body.encode() if isinstance(body, str) else body
    digest = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + payload, hashlib.sha256).digest()
    expected = base64.b64encode(digest)
    for candidate in signatures.split():
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(signature.encode(), expected):
            return
    raise WebhookRejected("webhook signature does not match the body: not sent by Replicate, or altered")


def model_for(request: GenerationRequest) -> str:
    """The Replicate model a request runs on: the request's own `model`, else the FLUX family member for its kind."""
    if request.model:
        return request.model
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


def _api_root(base_url: str) -> str:
    """The client adds `/v1/...` to every path, so the configured `…/v1` base loses its suffix here."""
    return base_url.rstrip("/").removesuffix("/v1")


class ReplicateProvider:
    """FLUX dev (+ one LoRA), FLUX Fill inpainting, Real-ESRGAN and PuLID on Replicate."""

    id = "replicate"
    capabilities = frozenset(Capability)  # all of them: FLUX dev (+ one LoRA), FLUX Fill, Real-ESRGAN, PuLID
    allows_nsfw = False

    def __init__(
        self,
        token: str | None,
        base_url: str = "https://api.replicate.com/v1",
        prices: PriceTable | None = None,
        poll_interval: float = 1.0,
        timeout_s: float = 1800.0,
        inline_limit: int = 256 * 1024,
    ) -> None:
        if not token or not token.strip():
            raise ProviderError(self.id, MISSING_TOKEN, transient=False)
        self.client = replicate.Client(
            api_token=token.strip(), base_url=_api_root(base_url), timeout=httpx.Timeout(60.0, connect=10.0)
        )
        self.prices = prices or PriceTable.load()
        self.poll_interval = poll_interval
        self.timeout_s = timeout_s
        # Inputs up to this size travel as data URIs, larger ones through /v1/files.
        self.inline_limit = inline_limit
        self._plain = httpx.Client(timeout=httpx.Timeout(300.0, connect=30.0), follow_redirects=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> ReplicateProvider | None:
        """The provider when REPLICATE_API_TOKEN is set, else None (Replicate is then simply not offered)."""
        if not secret(settings.replicate_api_token):
            return None
        return cls(
            secret(settings.replicate_api_token),
            base_url=settings.replicate_base_url,
            prices=PriceTable.load(settings.prices),
        )

    def estimate_cost(self, request: GenerationRequest) -> float:
        price = self.prices.price(self.id, model_for(request).split(":")[0])
        if isinstance(request, Upscale):
            return price.cost(1, 0, 0)
        return price.cost(request.count, request.width, request.height)

    # -- the job ---------------------------------------------------------------------------------------------
    def generate(self, request: GenerationRequest, ctx: ProviderContext) -> GenerationResult:
        model = model_for(request)
        self._refuse_unsupported(request, model)
        prediction = self._resume(ctx)
        if prediction is None:
            if ctx.cancelled():
                raise Cancelled(self.id)
            prediction = self._create(model, self._input(request))
            ctx.remember_remote_id(prediction.id)  # before any waiting: a restart resumes, never re-pays
        prediction = self._wait(prediction, ctx)
        if prediction.status == "failed":
            raise self._permanent(f"prediction {prediction.id} failed: {prediction.error}")
        if prediction.status == "canceled":
            raise self._permanent(f"prediction {prediction.id} was canceled on Replicate")
        seed = request.seed if not isinstance(request, Upscale) else None
        if seed is None and (found := _SEED.search(prediction.logs or "")):
            seed = int(found.group(1))
        images = [self._download(url, seed) for url in _output_urls(prediction.output)]
        if not images:
            raise self._permanent(f"prediction {prediction.id} finished without an image")
        seconds = (prediction.metrics or {}).get("predict_time")
        engine_seconds = float(seconds) if isinstance(seconds, int | float) else None
        price = self.prices.price(self.id, model.split(":")[0])
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
        known = ctx.known_remote_id()
        if not known:
            return None
        try:
            return self.client.predictions.get(known)
        except ReplicateError as exc:
            if exc.status == 404:  # Replicate does not know it, so nothing is running or billed: start over
                log.warning("Replicate prediction %s is unknown; creating it again", known)
                return None
            raise self._from_error(exc, "resuming the prediction") from exc
        except httpx.HTTPError as exc:
            raise ProviderError(
                self.id, f"resuming prediction {known} failed: {exc}", transient=True
            ) from exc

    def _create(self, model: str, model_input: dict[str, Any]) -> Prediction:
        try:
            owner, name, version = ModelVersionIdentifier.parse(model)
        except ValueError:
            raise self._permanent(f"model {model!r} must be owner/name or owner/name:version") from None
        with self._errors("creating the prediction"):
            if version:
                return self.client.predictions.create(version=version, input=model_input)
            if f"{owner}/{name}" in OFFICIAL:
                return self.client.models.predictions.create(model=f"{owner}/{name}", input=model_input)
            latest = self.client.models.get(f"{owner}/{name}").latest_version
            if latest is None:
                raise self._permanent(f"{owner}/{name} has no published version to run")
            return self.client.predictions.create(version=latest.id, input=model_input)

    def _wait(self, prediction: Prediction, ctx: ProviderContext) -> Prediction:
        deadline = time.monotonic() + self.timeout_s
        while prediction.status not in FINISHED:
            if ctx.cancelled():
                try:
                    self.client.predictions.cancel(prediction.id)
                except (ReplicateError, httpx.HTTPError) as exc:
                    log.warning("could not cancel Replicate prediction %s: %s", prediction.id, exc)
                raise Cancelled(self.id)
            if time.monotonic() > deadline:
                raise ProviderError(
                    self.id,
                    f"prediction {prediction.id} is still running after {self.timeout_s:.0f} s; "
                    "it is remembered, so running the job again resumes it",
                    transient=True,
                )
            time.sleep(self.poll_interval)
            with self._errors("checking the prediction"):
                prediction = self.client.predictions.get(prediction.id)
            if (progress := prediction.progress) is not None:
                ctx.progress(progress.current, progress.total)
        return prediction

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
        with self._errors("uploading an input file"):
            uploaded = self.client.files.create(
                io.BytesIO(data), filename=f"input.{suffix}", content_type=content_type
            )
        return uploaded.urls["get"]

    # -- outputs ---------------------------------------------------------------------------------------------
    def _download(self, url: str, seed: int | None) -> GeneratedImage:
        with self._errors("downloading the output"):
            response = self._plain.get(url)
        if response.status_code in (404, 410):
            raise self._permanent(f"output {url} is gone (Replicate deletes outputs an hour after the run)")
        if response.status_code >= 400:
            transient = response.status_code in TRANSIENT_STATUS or response.status_code >= 500
            raise ProviderError(
                self.id, f"downloading {url} failed with HTTP {response.status_code}", transient=transient
            )
        return output_image(self.id, response.content, seed)

    # -- errors ----------------------------------------------------------------------------------------------
    def _permanent(self, message: str) -> ProviderError:
        return ProviderError(self.id, message, transient=False)

    def _from_error(self, exc: ReplicateError, doing: str) -> ProviderError:
        status = exc.status or 0
        message = exc.detail or exc.title or "no detail given"
        transient = status in TRANSIENT_STATUS or status >= 500
        if status in (401, 403):
            message = (
                f"Replicate refused the token ({message}): "
                "check REPLICATE_API_TOKEN at https://replicate.com/account/api-tokens"
            )
        return ProviderError(
            self.id, f"{doing} failed with HTTP {status}: {message.strip()}", transient=transient
        )

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except ReplicateError as exc:
            raise self._from_error(exc, doing) from exc
        except httpx.TimeoutException as exc:
            raise ProviderError(self.id, f"{doing} timed out ({exc!r})", transient=True) from exc
        except httpx.HTTPError as exc:
            raise ProviderError(
                self.id, f"{doing} failed: cannot reach Replicate ({exc})", transient=True
            ) from exc


def _output_urls(output: Any) -> list[str]:
    """Image models answer one URL or a list of URLs."""
    if isinstance(output, str):
        return [output]
    if isinstance(output, list):
        return [str(item) for item in output if isinstance(item, str)]
    return []
