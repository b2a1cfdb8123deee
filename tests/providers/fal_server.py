"""A local fal.ai speaking the queue API and the storage upload the way fal-client 1.0.3 does, for tests.

Queue (https://docs.fal.ai/model-endpoints/queue): POST /{endpoint} → request_id and the request URLs;
GET /{owner}/{alias}/requests/{id}/status[?logs=1] → IN_QUEUE (queue_position) | IN_PROGRESS (logs) |
COMPLETED (logs, metrics); GET /{owner}/{alias}/requests/{id} → the model's output or its error;
PUT …/cancel → 202 CANCELLATION_REQUESTED or 400 ALREADY_COMPLETED. Request URLs drop the endpoint's subpath.
Storage (fal_client.client._upload_via_storage): POST /storage/upload/initiate?storage_type=gcs with
{file_name, content_type} → {upload_url, file_url}; PUT the bytes to upload_url; models read file_url.
Errors: model errors are 422 {"detail": [{loc, msg, type}]}, request errors {"detail": "…"}.
Billing (https://docs.fal.ai/documentation/model-apis/pricing): only successful outputs are billed, per image
megapixel rounded up to whole megapixels (as the model pages say) or per step; models without a per-output
price bill GPU-seconds, which run from the first IN_PROGRESS answer until the request completes or is
cancelled (`billed_usd`). A request neither completed nor cancelled keeps billing.

The "models" draw real images from the inputs (prompt, seed, size, input image), so a test can check pixels.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import re
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from PIL import Image, ImageDraw

Reply = tuple[int, Any, dict[str, str]]
# What fal bills per endpoint, as its model pages list it (USD): (unit, price per unit).
TARIFF: dict[str, tuple[str, float]] = {
    "fal-ai/flux/dev": ("megapixel", 0.025),
    "fal-ai/flux/dev/image-to-image": ("megapixel", 0.03),
    "fal-ai/flux-lora": ("megapixel", 0.035),
    "fal-ai/flux-lora/image-to-image": ("megapixel", 0.035),
    "fal-ai/flux-lora/inpainting": ("megapixel", 0.035),
    "fal-ai/flux-pulid": ("megapixel", 0.033),
    "fal-ai/esrgan": ("second", 0.00111),
    "fal-ai/z-image/turbo": ("megapixel", 0.005),
    "fal-ai/z-image/turbo/lora": ("megapixel", 0.0085),
    "fal-ai/qwen-image-edit-plus": ("megapixel", 0.03),
    "fal-ai/flux-lora-fast-training": ("step", 0.002),
    "fal-ai/qwen-image-trainer": ("step", 0.002),  # at least 250 steps charged
    "fal-ai/qwen-image-edit-2509-trainer": ("step", 0.004),  # at least 100 steps charged
}
MIN_BILLED_STEPS = {"fal-ai/qwen-image-trainer": 250, "fal-ai/qwen-image-edit-2509-trainer": 100}


@dataclass
class Submission:
    endpoint: str
    arguments: dict[str, Any]
    authorization: str


@dataclass
class StoredFile:
    content_type: str
    data: bytes
    file_name: str = ""


@dataclass
class QueuedRequest:
    id: str
    endpoint: str
    app: str
    arguments: dict[str, Any]
    polls: int = 0
    cancelled: bool = False
    outcome: tuple[int, Any] | None = None  # (HTTP status, body) once the model has run
    started: float | None = None  # monotonic time of the first IN_PROGRESS answer: GPU time runs from here
    stopped: float | None = None  # … until it completed or was cancelled
    charged_usd: float = 0.0  # per-output charges, made when it succeeded


@dataclass
class _Scripted:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


class BadInput(Exception):
    def __init__(self, field_name: str, message: str, kind: str = "value_error") -> None:
        super().__init__(message)
        self.detail = [{"loc": ["body", field_name], "msg": message, "type": kind}]


def draw(width: int, height: int, prompt: str, seed: int, index: int) -> Image.Image:
    """A deterministic picture of (prompt, seed, index): a colour field with a block placed by the seed."""
    digest = hashlib.sha256(f"{prompt}|{seed}|{index}".encode()).digest()
    image = Image.new("RGB", (width, height), (digest[0], digest[1], digest[2]))
    left, top = digest[3] % max(1, width // 2), digest[4] % max(1, height // 2)
    ImageDraw.Draw(image).rectangle(
        (left, top, left + width // 3, top + height // 3), fill=tuple(digest[5:8])
    )
    return image


def encode(image: Image.Image, fmt: str) -> tuple[bytes, str]:
    buffer = io.BytesIO()
    if fmt == "png":
        image.save(buffer, format="PNG")
        return buffer.getvalue(), "image/png"
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue(), "image/jpeg"


class FalServer:
    """Holds the queue; tests steer it (slow, failing, rate-limited) and read what it received."""

    def __init__(self, key: str = "test-fal-key") -> None:
        self.key = key
        self.queued_polls = 1  # status polls answered IN_QUEUE …
        self.pending_polls = 3  # … of the polls answered before COMPLETED (the rest IN_PROGRESS)
        self.output_format: str | None = None  # "jpeg" acts like an endpoint that ignores output_format
        self.flag_nsfw = False
        self.submissions: list[Submission] = []
        self.requests: dict[str, QueuedRequest] = {}
        self.files: dict[str, StoredFile] = {}
        self.uploads: list[StoredFile] = []  # what clients put through the storage upload
        self.cancels: list[str] = []
        self.status_polls: list[str] = []
        self.waits: list[float] = []  # what the client under test would have slept (its injected sleep)
        self.on_first_status: Callable[[str], None] | None = None  # runs before the first status answer
        self._script: dict[str, list[_Scripted]] = defaultdict(list)
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.app = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> FalServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def fail(
        self, operation: str, status: int, body: Any, headers: dict[str, str] | None = None, times: int = 1
    ):
        """Answer the next `times` calls of `operation` (submit, status, result, cancel, initiate) with this."""
        with self._lock:
            self._script[operation].extend(_Scripted(status, body, headers or {}) for _ in range(times))

    def _scripted(self, operation: str) -> Reply | None:
        with self._lock:
            if self._script[operation]:
                scripted = self._script[operation].pop(0)
                return scripted.status, scripted.body, scripted.headers
        return None

    # -- billing -------------------------------------------------------------------------------------------
    def gpu_seconds(self, request: QueuedRequest) -> float:
        """GPU time so far: from the first IN_PROGRESS answer until it stopped (or now, while it runs)."""
        if request.started is None:
            return 0.0
        end = request.stopped if request.stopped is not None else time.monotonic()
        return end - request.started

    def billed_usd(self, request_id: str) -> float:
        """What fal has charged for the request so far."""
        request = self.requests[request_id]
        unit, price = TARIFF[request.endpoint]
        return self.gpu_seconds(request) * price if unit == "second" else request.charged_usd

    def _start(self, request: QueuedRequest) -> None:
        if request.started is None:
            request.started = time.monotonic()

    def _stop(self, request: QueuedRequest) -> None:
        """The request completed (its outcome is set) or was cancelled: GPU time stops, outputs are charged."""
        if request.stopped is not None:
            return
        self._start(request)
        request.stopped = time.monotonic()
        if request.outcome is None or request.outcome[0] != 200:
            return
        unit, price = TARIFF[request.endpoint]
        body = request.outcome[1]
        if unit == "megapixel":
            files = body.get("images") or [body.get("image")]
            megapixels = sum(math.ceil(file["width"] * file["height"] / 1_000_000) for file in files)
            request.charged_usd = megapixels * price
        elif unit == "step":
            steps = max(int(request.arguments.get("steps", 1000)), MIN_BILLED_STEPS.get(request.endpoint, 0))
            request.charged_usd = steps * price

    def _metrics(self, request: QueuedRequest) -> dict[str, float]:
        """inference_time: the GPU time billed for per-second endpoints, a fixed 0.42 s for the others."""
        per_second = TARIFF[request.endpoint][0] == "second"
        return {"inference_time": self.gpu_seconds(request) if per_second else 0.42}

    # -- routing -------------------------------------------------------------------------------------------
    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Reply:
        parts = urlsplit(target)
        path, query = parts.path, parse_qs(parts.query)
        if method == "GET" and path.startswith("/files/"):
            stored = self.files.get(path.removeprefix("/files/"))
            if stored is None:
                return 404, {"detail": "File not found"}, {}
            return 200, stored, {}
        if method == "PUT" and path.startswith("/storage/blobs/"):  # a signed URL: no key needed
            file_id = path.removeprefix("/storage/blobs/")
            stored = StoredFile(headers.get("content-type", "application/octet-stream"), body)
            with self._lock:
                self.files[file_id] = stored
                self.uploads.append(stored)
            return 200, b"", {}
        if headers.get("authorization") != f"Key {self.key}":
            return 401, {"detail": "Invalid API key"}, {}
        if method == "POST" and path == "/storage/upload/initiate":
            return self._scripted("initiate") or self._initiate(json.loads(body), query)
        found = re.fullmatch(r"/(.+)/requests/([^/]+?)(/status|/cancel)?", path)
        if found:
            app, request_id, tail = found.groups()
            request = self.requests.get(request_id)
            if request is None or request.app != app:
                return 404, {"detail": f"Request {request_id} not found"}, {}
            if method == "GET" and tail == "/status":
                return self._status(request, query.get("logs", ["0"])[0] in ("1", "true"))
            if method == "GET" and tail is None:
                return self._result(request)
            if method == "PUT" and tail == "/cancel":
                return self._cancel(request)
        if method == "POST":
            return self._scripted("submit") or self._submit(
                path.strip("/"), json.loads(body or b"{}"), headers
            )
        return 405, {"detail": f"{method} {path} is not part of the queue API"}, {}

    def _request_urls(self, request: QueuedRequest) -> dict[str, str]:
        base = f"{self.url}/{request.app}/requests/{request.id}"
        return {"response_url": base, "status_url": f"{base}/status", "cancel_url": f"{base}/cancel"}

    def _submit(self, endpoint: str, arguments: dict[str, Any], headers: dict[str, str]) -> Reply:
        owner, alias = endpoint.split("/")[:2]
        request = QueuedRequest(str(uuid.uuid4()), endpoint, f"{owner}/{alias}", arguments)
        with self._lock:
            self.submissions.append(Submission(endpoint, arguments, headers.get("authorization", "")))
            self.requests[request.id] = request
        return 200, {"request_id": request.id, **self._request_urls(request), "queue_position": 0}, {}

    def _status(self, request: QueuedRequest, with_logs: bool) -> Reply:
        with self._lock:
            first = not request.polls
            request.polls += 1
            self.status_polls.append(request.id)
        if first and self.on_first_status is not None:
            self.on_first_status(request.id)
        scripted = self._scripted("status")
        if scripted:
            return scripted
        urls = self._request_urls(request)
        if request.polls <= self.queued_polls and not request.cancelled:
            position = self.queued_polls - request.polls
            return 200, {"status": "IN_QUEUE", "queue_position": position, "logs": None, **urls}, {}
        steps = int(request.arguments.get("num_inference_steps", 28))
        if request.polls <= self.pending_polls and not request.cancelled:
            self._start(request)
            done = steps * (request.polls - self.queued_polls) // (self.pending_polls - self.queued_polls + 1)
            bar = f"{100 * done // steps:3d}%|{'█' * (done * 10 // steps):<10}| {done}/{steps} [00:01<00:02, 5.1it/s]"
            logs = [{"message": bar, "level": "INFO", "source": "user", "timestamp": "2026-01-01T00:00:00"}]
            return 200, {"status": "IN_PROGRESS", "logs": logs if with_logs else None, **urls}, {}
        if request.outcome is None:
            request.outcome = (
                (499, {"detail": "Request cancelled"}) if request.cancelled else self._run(request)
            )
            self._stop(request)
        completed: dict[str, Any] = {"status": "COMPLETED", "logs": [] if with_logs else None, **urls}
        completed["metrics"] = self._metrics(request)
        if request.outcome[0] != 200:
            completed["error"], completed["error_type"] = str(request.outcome[1]["detail"]), "model_error"
        return 200, completed, {}

    def _result(self, request: QueuedRequest) -> Reply:
        scripted = self._scripted("result")
        if scripted:
            return scripted
        if request.outcome is None:
            return 400, {"detail": "Request is still in progress"}, {}
        return request.outcome[0], request.outcome[1], {"x-fal-request-id": request.id}

    def _cancel(self, request: QueuedRequest) -> Reply:
        self.cancels.append(request.id)
        scripted = self._scripted("cancel")
        if scripted:
            return scripted
        if request.outcome is not None:
            return 400, {"status": "ALREADY_COMPLETED"}, {}
        request.cancelled = True
        self._stop(request)
        return 202, {"status": "CANCELLATION_REQUESTED"}, {}

    def _initiate(self, body: dict[str, Any], query: dict[str, list[str]]) -> Reply:
        if query.get("storage_type") != ["gcs"] or "content_type" not in body:
            return (
                422,
                {
                    "detail": [
                        {"loc": ["body"], "msg": "content_type and storage_type=gcs", "type": "missing"}
                    ]
                },
                {},
            )
        file_id = f"{uuid.uuid4().hex}-{body.get('file_name', 'upload.bin')}"
        return (
            200,
            {"upload_url": f"{self.url}/storage/blobs/{file_id}", "file_url": f"{self.url}/files/{file_id}"},
            {},
        )

    # -- the "models" --------------------------------------------------------------------------------------
    def fetch(self, url: str, field_name: str) -> bytes:
        """What a runner does with a file input: decode a data URI or download from storage."""
        if url.startswith("data:"):
            return base64.b64decode(url.partition(",")[2])
        if url.startswith(f"{self.url}/files/") and url.removeprefix(f"{self.url}/files/") in self.files:
            return self.files[url.removeprefix(f"{self.url}/files/")].data
        raise BadInput(field_name, f"Failed to download the file from {url}", "file_download_error")

    def _image(self, url: Any, field_name: str) -> Image.Image:
        if not isinstance(url, str):
            raise BadInput(field_name, "Field required", "missing")
        return Image.open(io.BytesIO(self.fetch(url, field_name))).convert("RGB")

    def _run(self, request: QueuedRequest) -> tuple[int, Any]:
        try:
            images, seed = self._model(request.endpoint, request.arguments)
        except BadInput as exc:
            return 422, {"detail": exc.detail}
        fmt = self.output_format or request.arguments.get("output_format", "jpeg")
        outputs = []
        for image in images:
            data, content_type = encode(image, fmt)
            file_id = uuid.uuid4().hex
            self.files[file_id] = StoredFile(content_type, data)
            url = f"{self.url}/files/{file_id}"
            outputs.append(
                {"url": url, "width": image.width, "height": image.height, "content_type": content_type}
            )
        if request.endpoint == "fal-ai/esrgan":
            return 200, {"image": outputs[0]}
        body = {
            "images": outputs,
            "seed": seed,
            "timings": {"inference": 0.42},
            "prompt": request.arguments["prompt"],
        }
        body["has_nsfw_concepts"] = [self.flag_nsfw] * len(outputs)
        return 200, body

    def _model(self, endpoint: str, arguments: dict[str, Any]) -> tuple[list[Image.Image], int]:
        if endpoint == "fal-ai/esrgan":
            small = self._image(arguments.get("image_url"), "image_url")
            scale = float(arguments.get("scale", 2))
            size = (int(small.width * scale), int(small.height * scale))
            return [small.resize(size, Image.Resampling.NEAREST)], 0
        prompt = arguments.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise BadInput("prompt", "Field required", "missing")
        # Without image_size an edit endpoint (flux/dev/image-to-image, kontext) keeps its input's size.
        first_input = arguments.get("image_url") or (arguments.get("image_urls") or [None])[0]
        if "image_size" not in arguments and isinstance(first_input, str):
            given = self._image(first_input, "image_url")
            image_size = {"width": given.width, "height": given.height}
        else:
            image_size = arguments.get("image_size", {"width": 1024, "height": 768})
        width, height = int(image_size["width"]), int(image_size["height"])
        if not (64 <= width <= 2048 and 64 <= height <= 2048):
            raise BadInput("image_size", "width and height must be between 64 and 2048")
        seed = int(arguments.get("seed", 1234))
        for lora in arguments.get("loras", []):
            if not isinstance(lora.get("path"), str) or not isinstance(lora.get("scale", 1.0), int | float):
                raise BadInput("loras", "each LoRA needs a path and a numeric scale")
            if lora["path"].startswith(self.url):
                self.fetch(lora["path"], "loras")
        source: Image.Image | None = None
        if "reference_image_url" in arguments or endpoint == "fal-ai/flux-pulid":
            self._image(arguments.get("reference_image_url"), "reference_image_url")
        if "image_url" in arguments or "image-to-image" in endpoint or "inpainting" in endpoint:
            source = self._image(arguments.get("image_url"), "image_url").resize((width, height))
        if "image_urls" in arguments:  # Seedream / Qwen-Image-Edit-Plus: a list of input images
            urls = arguments["image_urls"]
            if not isinstance(urls, list) or not urls:
                raise BadInput("image_urls", "a non-empty list of image URLs is required")
            loaded = [self._image(url, "image_urls") for url in urls]  # every one must be readable
            source = loaded[0].resize((width, height))
        mask = (
            self._image(arguments.get("mask_url"), "mask_url").convert("L")
            if "inpainting" in endpoint
            else None
        )
        images = []
        for index in range(int(arguments.get("num_images", 1))):
            drawn = draw(width, height, prompt, seed, index)
            if source is not None and mask is not None:
                drawn = Image.composite(drawn, source, mask.resize((width, height)))
            elif source is not None:
                drawn = Image.blend(source, drawn, float(arguments.get("strength", 0.95)))
            images.append(drawn)
        return images, seed


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes; do not wait on delayed ACKs

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        status, payload, extra = self.server.app.handle(self.command, self.path, headers, body)  # type: ignore[attr-defined]
        if isinstance(payload, StoredFile):
            data, content_type = payload.data, payload.content_type
        elif isinstance(payload, bytes):
            data, content_type = payload, "application/octet-stream"
        else:
            data, content_type = json.dumps(payload).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = _serve

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass
