"""fal.ai through its queue API: submit, remember the request id, poll, fetch, copy the images — resumable.

Protocol (https://docs.fal.ai/model-endpoints/queue): POST {queue}/{endpoint} answers a `request_id`;
status, result and cancel live under {queue}/{owner}/{alias}/requests/{id}, without the endpoint's subpath.
fal-client 1.0.3 fixes its hosts at import (queue.fal.run from FAL_QUEUE_RUN_HOST, https only; rest.fal.ai
hard-coded), so submit and the storage upload go to the configured `fal_queue_url` / `fal_rest_url` here,
while status, result and cancel go through the client's own `SyncRequestHandle` (its retries, timeouts and
error parsing).
"""

from __future__ import annotations

import base64
import io
import logging
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fal_client
import httpx
from PIL import Image

from flenwheel.config import Settings, secret
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

MISSING_KEY = "FAL_KEY is not set: export it or pick --provider local"
TEXT_TO_IMAGE = "fal-ai/flux/dev"
TEXT_TO_IMAGE_LORA = "fal-ai/flux-lora"
IMAGE_TO_IMAGE = "fal-ai/flux/dev/image-to-image"
IMAGE_TO_IMAGE_LORA = "fal-ai/flux-lora/image-to-image"
INPAINT = "fal-ai/flux-lora/inpainting"
UPSCALE = "fal-ai/esrgan"
IDENTITY = "fal-ai/flux-pulid"
TRANSIENT_STATUS = frozenset({408, 409, 425, 429})
_TQDM = re.compile(r"\|\s*(\d+)/(\d+)\s*\[")  # a tqdm bar in the runner's logs: " 35%|███▌  | 7/20 [00:01<…"


def endpoint_for(request: GenerationRequest) -> str:
    """The fal endpoint for a request: its own `model`, else the FLUX family member for its kind."""
    if request.model:
        return request.model
    if isinstance(request, TextToImage):
        return TEXT_TO_IMAGE_LORA if request.loras else TEXT_TO_IMAGE
    if isinstance(request, ImageToImage):
        return IMAGE_TO_IMAGE_LORA if request.loras else IMAGE_TO_IMAGE
    if isinstance(request, Inpaint):
        return INPAINT
    if isinstance(request, Upscale):
        return UPSCALE
    return IDENTITY


def app_path(endpoint: str) -> str:
    """`owner/alias` of an endpoint: fal-ai/flux/dev → fal-ai/flux (request URLs omit the subpath)."""
    app = fal_client.client.AppId.from_endpoint_id(endpoint)
    prefix = f"{app.namespace}/" if app.namespace else ""
    return f"{prefix}{app.owner}/{app.alias}"


def _describe(response: httpx.Response) -> str:
    """fal's error body in one line: `detail` is a string (request errors) or typed errors (model errors)."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                where = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                parts.append(f"{where}: {item.get('msg', item)}" if where else str(item.get("msg", item)))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)[:500]


class FalProvider:
    """FLUX text-to-image, image-to-image, inpainting with LoRAs, ESRGAN upscaling and PuLID on fal.ai."""

    id = "fal"
    capabilities = frozenset(Capability)  # all of them: FLUX (+ LoRAs), FLUX inpainting, ESRGAN, PuLID
    allows_nsfw = False

    def __init__(
        self,
        key: str | None,
        queue_url: str = "https://queue.fal.run",
        rest_url: str = "https://rest.fal.ai",
        prices: PriceTable | None = None,
        poll_interval: float = 1.0,
        timeout_s: float = 1800.0,
        inline_limit: int = 256 * 1024,
    ) -> None:
        if not key or not key.strip():
            raise ProviderError(self.id, MISSING_KEY, transient=False)
        self.queue_url = queue_url.rstrip("/")
        self.rest_url = rest_url.rstrip("/")
        self.prices = prices or PriceTable.load()
        self.poll_interval = poll_interval
        self.timeout_s = timeout_s
        # Inputs up to this size travel as data URIs, larger ones through fal storage.
        self.inline_limit = inline_limit
        headers = {"Authorization": f"Key {key.strip()}", "User-Agent": fal_client.client.USER_AGENT}
        self._api = httpx.Client(
            headers=headers, timeout=httpx.Timeout(120.0, connect=30.0), follow_redirects=True
        )
        # Signed upload URLs and the CDN get no key: it must not travel to other hosts.
        self._plain = httpx.Client(timeout=httpx.Timeout(300.0, connect=30.0), follow_redirects=True)
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
        )

    # -- cost ------------------------------------------------------------------------------------------------
    def estimate_cost(self, request: GenerationRequest) -> float:
        price = self.prices.price(self.id, endpoint_for(request))
        if isinstance(request, Upscale):
            try:
                with Image.open(io.BytesIO(request.image)) as image:  # reads the header only
                    width, height = image.size
            except OSError:
                raise self._permanent("the image to upscale is not an image flenwheel can read") from None
            return price.cost(1, width * request.factor, height * request.factor)
        return price.cost(request.count, request.width, request.height)

    # -- the job ---------------------------------------------------------------------------------------------
    def generate(self, request: GenerationRequest, ctx: ProviderContext) -> GenerationResult:
        endpoint = endpoint_for(request)
        self._refuse_unsupported(request, endpoint)
        handle = self._resume(endpoint, ctx)
        if handle is None:
            if ctx.cancelled():
                raise Cancelled(self.id)
            handle = self._submit(endpoint, self._arguments(request))
            ctx.remember_remote_id(handle.request_id)  # before any waiting: a restart resumes, never re-pays
        completed = self._wait(handle, ctx)
        with self._errors("fetching the result"):
            output = handle.get(interval=self.poll_interval)
        images = self._collect(output, handle.request_id)
        engine_seconds = _engine_seconds(completed, output)
        price = self.prices.price(self.id, endpoint)
        first = images[0]
        return GenerationResult(
            images=tuple(images),
            provider=self.id,
            model=endpoint,
            cost_usd=price.cost(len(images), first.width, first.height, engine_seconds or 0.0),
            remote_id=handle.request_id,
            engine_seconds=engine_seconds,
        )

    def _refuse_unsupported(self, request: GenerationRequest, endpoint: str) -> None:
        if request.loras and isinstance(request, Upscale | IdentityReference):
            raise self._permanent(f"{endpoint} takes no LoRAs: drop them or use a LoRA-mode request")
        if isinstance(request, IdentityReference) and request.count != 1:
            raise self._permanent(f"{endpoint} makes one image per request: ask for count=1")
        if request.negative and not isinstance(request, IdentityReference | Upscale):
            log.warning("fal %s has no negative prompt; it is ignored", endpoint)

    def _handle(self, endpoint: str, request_id: str) -> fal_client.SyncRequestHandle:
        base = f"{self.queue_url}/{app_path(endpoint)}/requests/{request_id}"
        return fal_client.SyncRequestHandle(
            request_id=request_id,
            response_url=base,
            status_url=f"{base}/status",
            cancel_url=f"{base}/cancel",
            client=self._api,
        )

    def _resume(self, endpoint: str, ctx: ProviderContext) -> fal_client.SyncRequestHandle | None:
        known = ctx.known_remote_id()
        if not known:
            return None
        handle = self._handle(endpoint, known)
        try:
            handle.status()
        except fal_client.FalClientHTTPError as exc:
            if exc.status_code == 404:  # fal no longer knows it, so nothing is running or billed: start over
                log.warning("fal request %s is unknown to fal; submitting again", known)
                return None
            raise self._from_response(exc.response, "resuming the request") from exc
        except httpx.HTTPError as exc:
            raise ProviderError(self.id, f"resuming request {known} failed: {exc}", transient=True) from exc
        return handle

    def _submit(self, endpoint: str, arguments: dict[str, Any]) -> fal_client.SyncRequestHandle:
        with self._errors("submitting the request"):
            response = self._api.post(f"{self.queue_url}/{endpoint}", json=arguments)
        if response.status_code >= 400:
            raise self._from_response(response, "submitting the request")
        return self._handle(endpoint, str(response.json()["request_id"]))

    def _wait(self, handle: fal_client.SyncRequestHandle, ctx: ProviderContext) -> fal_client.Completed:
        deadline = time.monotonic() + self.timeout_s
        while True:
            if ctx.cancelled():
                self._cancel(handle)
                raise Cancelled(self.id)
            with self._errors("checking the request status"):
                status = handle.status(with_logs=True)
            if isinstance(status, fal_client.Completed):
                return status
            if isinstance(status, fal_client.InProgress):
                _report_steps(status.logs, ctx)
            if time.monotonic() > deadline:
                raise ProviderError(
                    self.id,
                    f"request {handle.request_id} is still running after {self.timeout_s:.0f} s; "
                    "it is remembered, so running the job again resumes it",
                    transient=True,
                )
            time.sleep(self.poll_interval)

    def _cancel(self, handle: fal_client.SyncRequestHandle) -> None:
        try:
            handle.cancel()
        except (fal_client.FalClientHTTPError, httpx.HTTPError) as exc:  # e.g. 400 ALREADY_COMPLETED
            log.warning("could not cancel fal request %s: %s", handle.request_id, exc)

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
        """fal storage: initiate → a signed upload URL and the file URL models read; then PUT the bytes."""
        with self._errors("uploading an input file"):
            initiated = self._api.post(
                f"{self.rest_url}/storage/upload/initiate",
                params={"storage_type": "gcs"},
                json={"file_name": file_name, "content_type": content_type},
            )
            if initiated.status_code >= 400:
                raise self._from_response(initiated, "uploading an input file")
            target = initiated.json()
            stored = self._plain.put(
                target["upload_url"], content=data, headers={"Content-Type": content_type}
            )
            if stored.status_code >= 400:
                raise self._from_response(stored, "uploading an input file")
        return str(target["file_url"])

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
            with self._errors("downloading the image"):
                response = self._plain.get(url)
            if response.status_code >= 400:
                raise self._from_response(response, f"downloading {url}")
            data = response.content
        return output_image(self.id, data, seed)

    # -- errors ----------------------------------------------------------------------------------------------
    def _permanent(self, message: str) -> ProviderError:
        return ProviderError(self.id, message, transient=False)

    def _from_response(self, response: httpx.Response, doing: str) -> ProviderError:
        status = response.status_code
        message = _describe(response)
        retryable = response.headers.get("x-fal-retryable")
        transient = status in TRANSIENT_STATUS or status >= 500
        if retryable in ("true", "false"):
            transient = retryable == "true"
        if status in (401, 403):
            message = f"fal refused the key ({message}): check FAL_KEY at https://fal.ai/dashboard/keys"
        elif status == 429 and response.headers.get("retry-after"):
            message = f"{message} (retry after {response.headers['retry-after']} s)"
        return ProviderError(self.id, f"{doing} failed with HTTP {status}: {message}", transient=transient)

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except fal_client.FalClientHTTPError as exc:
            raise self._from_response(exc.response, doing) from exc
        except httpx.TimeoutException as exc:
            raise ProviderError(self.id, f"{doing} timed out ({exc!r})", transient=True) from exc
        except httpx.HTTPError as exc:
            raise ProviderError(self.id, f"{doing} failed: cannot reach fal ({exc})", transient=True) from exc


def _report_steps(logs: list[dict[str, Any]] | None, ctx: ProviderContext) -> None:
    for entry in reversed(logs or []):
        found = _TQDM.search(str(entry.get("message", "")))
        if found:
            ctx.progress(int(found.group(1)), int(found.group(2)))
            return


def _engine_seconds(completed: fal_client.Completed, output: dict[str, Any]) -> float | None:
    seconds = (completed.metrics or {}).get("inference_time")
    if seconds is None:
        seconds = (output.get("timings") or {}).get("inference")
    return float(seconds) if isinstance(seconds, int | float) else None
