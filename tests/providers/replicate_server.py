"""A local Replicate speaking the HTTP API the way replicate-python 1.0.7 does, for tests.

https://replicate.com/docs/reference/http: POST /v1/models/{owner}/{name}/predictions (official models) or
POST /v1/predictions {version, input} → 201 prediction (status "starting"); GET /v1/predictions/{id} →
starting → processing (logs with a tqdm bar) → succeeded (output URLs on the delivery host, metrics) or
failed (error); POST /v1/predictions/{id}/cancel → the prediction, "canceled"; GET /v1/models/{owner}/{name}
→ the model with latest_version; POST /v1/files (multipart "content") → a file whose urls.get models read.
Errors are problem details: {"title", "detail", "status"} (422 adds "invalid_fields"); auth is
`Authorization: Bearer <token>`. The "models" draw real images from the inputs so tests can check pixels.
Billing (https://replicate.com/pricing): official models bill each output image; other models bill GPU
time (predict_time) from the moment the prediction starts processing until it finishes or is canceled,
whether or not it succeeds (`billed_usd`). A prediction neither finished nor canceled keeps billing.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from PIL import Image, ImageDraw

Reply = tuple[int, Any, dict[str, str]]
NOW = "2026-01-01T00:00:00.000000Z"
# What Replicate bills per model (USD): (unit, price per unit) — official models per output image, the others
# per second of their hardware (real-esrgan: T4; flux-pulid: L40S), as replicate.com lists them.
TARIFF: dict[str, tuple[str, float]] = {
    "black-forest-labs/flux-dev": ("image", 0.025),
    "black-forest-labs/flux-dev-lora": ("image", 0.032),
    "black-forest-labs/flux-fill-dev": ("image", 0.04),
    "nightmareai/real-esrgan": ("second", 0.000225),
    "bytedance/flux-pulid": ("second", 0.000975),
}
# model → (official?, latest version id)
MODELS = {
    "black-forest-labs/flux-dev": (True, "fd1e5a3b" * 8),
    "black-forest-labs/flux-dev-lora": (True, "a22c4d5e" * 8),
    "black-forest-labs/flux-fill-dev": (True, "c9d4e1f2" * 8),
    "nightmareai/real-esrgan": (False, "42fed1c4974146d4d2414e2be2c5277c7fcf05fcc3a73abf41610695738c1d7b"),
    "bytedance/flux-pulid": (False, "8baa7ef2255075b46f4d91cd238c21d31181b3e6a864463f967960bb0112525b"),
}


@dataclass
class Creation:
    path: str
    body: dict[str, Any]
    authorization: str


@dataclass
class StoredFile:
    content_type: str
    data: bytes
    name: str = ""


@dataclass
class PredictionState:
    id: str
    model: str
    version: str
    input: dict[str, Any]
    polls: int = 0
    status: str = "starting"
    logs: str = ""
    output: Any = None
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    started: float | None = None  # monotonic time it began processing: GPU time runs from here
    stopped: float | None = None  # … until it finished or was canceled


@dataclass
class _Scripted:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


def problem(status: int, title: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"title": title, "detail": detail, "status": status, **extra}


def draw(width: int, height: int, prompt: str, seed: int, index: int) -> Image.Image:
    """A deterministic picture of (prompt, seed, index)."""
    digest = hashlib.sha256(f"{prompt}|{seed}|{index}".encode()).digest()
    image = Image.new("RGB", (width, height), (digest[0], digest[1], digest[2]))
    left, top = digest[3] % max(1, width // 2), digest[4] % max(1, height // 2)
    ImageDraw.Draw(image).rectangle(
        (left, top, left + width // 3, top + height // 3), fill=tuple(digest[5:8])
    )
    return image


def size_of(aspect_ratio: str, megapixels: str) -> tuple[int, int]:
    """FLUX's output size for a ratio and a megapixel budget, rounded to 16 px."""
    across, down = (int(part) for part in aspect_ratio.split(":"))
    area = float(megapixels) * 1024 * 1024 / 16  # a small, fast stand-in: 1/16 of the real pixel count
    height = (area * down / across) ** 0.5
    return max(16, round(height * across / down / 16) * 16), max(16, round(height / 16) * 16)


class ReplicateServer:
    """Holds predictions and files; tests steer it (slow, failing, throttled) and read what it received."""

    def __init__(self, token: str = "r8_test_token") -> None:
        self.token = token
        self.pending_polls = 3  # GETs answered starting/processing before the prediction finishes
        self.output_format: str | None = None  # "webp"/"jpg": a model that ignores output_format
        self.fail_prediction: str | None = None  # the error a model run ends with
        self.outputs_expired = False
        self.creations: list[Creation] = []
        self.predictions: dict[str, PredictionState] = {}
        self.files: dict[str, StoredFile] = {}
        self.uploads: list[StoredFile] = []
        self.cancels: list[str] = []
        self.gets: list[str] = []
        self.waits: list[float] = []  # what the client under test would have slept (its injected sleep)
        self.model_lookups: list[str] = []
        self.on_first_get: Callable[[str], None] | None = None  # runs before the first GET is answered
        self._script: dict[str, list[_Scripted]] = defaultdict(list)
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.app = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> ReplicateServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def fail(
        self, operation: str, status: int, body: Any, headers: dict[str, str] | None = None, times: int = 1
    ):
        """Answer the next `times` calls of `operation` (create, get, cancel, files, model) with this."""
        with self._lock:
            self._script[operation].extend(_Scripted(status, body, headers or {}) for _ in range(times))

    def _scripted(self, operation: str) -> Reply | None:
        with self._lock:
            if self._script[operation]:
                scripted = self._script[operation].pop(0)
                return scripted.status, scripted.body, scripted.headers
        return None

    # -- billing -------------------------------------------------------------------------------------------
    def gpu_seconds(self, state: PredictionState) -> float:
        """GPU time so far: from when it began processing until it stopped (or now, while it runs)."""
        if state.started is None:
            return 0.0
        end = state.stopped if state.stopped is not None else time.monotonic()
        return end - state.started

    def billed_usd(self, prediction_id: str) -> float:
        """What Replicate has charged for the prediction so far."""
        state = self.predictions[prediction_id]
        unit, price = TARIFF[state.model]
        if unit == "second":
            return self.gpu_seconds(state) * price
        images = state.output if isinstance(state.output, list) else []
        return len(images) * price if state.status == "succeeded" else 0.0

    def _stop(self, state: PredictionState) -> None:
        if state.started is None:
            state.started = time.monotonic()
        if state.stopped is None:
            state.stopped = time.monotonic()

    # -- routing -------------------------------------------------------------------------------------------
    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Reply:
        path = urlsplit(target).path
        if method == "GET" and path.startswith("/delivery/"):  # replicate.delivery: public, expiring
            stored = self.files.get(path)
            if stored is None or self.outputs_expired:
                return 404, b"Not Found", {}
            return 200, stored, {}
        if headers.get("authorization") != f"Bearer {self.token}":
            return 401, problem(401, "Unauthenticated", "You did not pass a valid authentication token"), {}
        if method == "POST" and path == "/v1/files":
            return self._scripted("files") or self._upload(headers, body)
        if method == "POST" and path == "/v1/predictions":
            return self._scripted("create") or self._create_by_version(path, json.loads(body), headers)
        found = re.fullmatch(r"/v1/models/([^/]+/[^/]+)(/predictions)?", path)
        if found and method == "GET" and not found.group(2):
            return self._scripted("model") or self._model(found.group(1))
        if found and method == "POST":
            return self._scripted("create") or self._create_by_model(
                path, found.group(1), json.loads(body), headers
            )
        found = re.fullmatch(r"/v1/predictions/([^/]+)(/cancel)?", path)
        if found:
            state = self.predictions.get(found.group(1))
            if state is None:
                return 404, problem(404, "Not found", "The requested resource could not be found."), {}
            if method == "GET" and not found.group(2):
                return self._get(state)
            if method == "POST" and found.group(2):
                return self._cancel(state)
        return 404, problem(404, "Not found", f"{method} {path} is not part of this API"), {}

    def _json(self, state: PredictionState) -> dict[str, Any]:
        base = f"{self.url}/v1/predictions/{state.id}"
        finished = state.status in ("succeeded", "failed", "canceled")
        return {
            "id": state.id,
            "model": state.model,
            "version": state.version,
            "input": state.input,
            "logs": state.logs,
            "output": state.output,
            "data_removed": False,
            "error": state.error,
            "status": state.status,
            "created_at": NOW,
            "started_at": NOW if state.polls else None,
            "completed_at": NOW if finished else None,
            "metrics": state.metrics,
            "urls": {"get": base, "cancel": f"{base}/cancel", "web": f"https://replicate.com/p/{state.id}"},
        }

    def _model(self, name: str) -> Reply:
        self.model_lookups.append(name)
        if name not in MODELS:
            return 404, problem(404, "Not found", f"Model {name} does not exist"), {}
        owner, model_name = name.split("/")
        latest = {"id": MODELS[name][1], "created_at": NOW, "cog_version": "0.9.4", "openapi_schema": {}}
        model = {
            "url": f"https://replicate.com/{name}",
            "owner": owner,
            "name": model_name,
            "description": None,
            "visibility": "public",
            "github_url": None,
            "paper_url": None,
            "license_url": None,
            "run_count": 1,
            "cover_image_url": None,
            "default_example": None,
            "latest_version": latest,
        }
        return 200, model, {}

    def _create_by_model(self, path: str, name: str, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        self.creations.append(Creation(path, body, headers.get("authorization", "")))
        if name not in MODELS or not MODELS[name][0]:
            return 404, problem(404, "Not found", f"{name} is not an official model: run it by version"), {}
        return self._create(name, MODELS[name][1], body)

    def _create_by_version(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        self.creations.append(Creation(path, body, headers.get("authorization", "")))
        for name, (_, version) in MODELS.items():
            if version == body.get("version"):
                return self._create(name, version, body)
        return (
            422,
            problem(422, "Invalid version or not permitted", "The specified version does not exist"),
            {},
        )

    def _create(self, name: str, version: str, body: dict[str, Any]) -> Reply:
        model_input = body.get("input")
        if not isinstance(model_input, dict):
            return (
                422,
                problem(422, "Input validation failed", "- input: Invalid type. Expected: object\n"),
                {},
            )
        required = {"nightmareai/real-esrgan": "image", "bytedance/flux-pulid": "main_face_image"}.get(
            name, "prompt"
        )
        if not model_input.get(required):
            invalid = [{"type": "required", "field": "input", "description": f"{required} is required"}]
            detail = f"- input: {required} is required\n"
            return 422, problem(422, "Input validation failed", detail, invalid_fields=invalid), {}
        state = PredictionState(uuid.uuid4().hex[:26], name, version, model_input)
        with self._lock:
            self.predictions[state.id] = state
        return 201, self._json(state), {}

    def _get(self, state: PredictionState) -> Reply:
        with self._lock:
            first = not state.polls
            state.polls += 1
            self.gets.append(state.id)
        if first and self.on_first_get is not None:
            self.on_first_get(state.id)
        scripted = self._scripted("get")
        if scripted:
            return scripted
        if state.status in ("starting", "processing") and (
            state.polls > 1 or state.polls > self.pending_polls
        ):
            steps = int(state.input.get("num_inference_steps") or state.input.get("num_steps") or 28)
            seed = int(state.input.get("seed", 4242))
            done = min(steps, steps * (state.polls - 1) // max(1, self.pending_polls))
            bar = f"{100 * done // steps:3d}%|{'█' * (done * 10 // steps):<10}| {done}/{steps} [00:01<00:02, 5.1it/s]"
            state.status, state.logs = "processing", f"Using seed: {seed}\n{bar}\n"
            if state.started is None:
                state.started = time.monotonic()
            if state.polls > self.pending_polls:
                self._run(state)
        return 200, self._json(state), {}

    def _cancel(self, state: PredictionState) -> Reply:
        self.cancels.append(state.id)
        scripted = self._scripted("cancel")
        if scripted:
            return scripted
        if state.status in ("starting", "processing"):
            state.status = "canceled"
            self._stop(state)
        return 200, self._json(state), {}

    def _upload(self, headers: dict[str, str], body: bytes) -> Reply:
        message = BytesParser(policy=HTTP).parsebytes(
            f"Content-Type: {headers.get('content-type', '')}\r\n\r\n".encode() + body
        )
        for part in message.iter_parts():
            if part.get_param("name", header="content-disposition") == "content":
                data = part.get_payload(decode=True)
                assert isinstance(data, bytes)
                stored = StoredFile(part.get_content_type(), data, part.get_filename() or "file")
                file_id = uuid.uuid4().hex[:26]
                self.files[f"/v1/files/{file_id}"] = stored
                self.uploads.append(stored)
                file = {
                    "id": file_id,
                    "name": stored.name,
                    "content_type": stored.content_type,
                    "size": len(data),
                    "etag": hashlib.md5(data).hexdigest(),
                    "checksums": {"sha256": hashlib.sha256(data).hexdigest()},
                    "metadata": {},
                    "created_at": NOW,
                    "expires_at": None,
                    "urls": {"get": f"{self.url}/v1/files/{file_id}"},
                }
                return 201, file, {}
        return 400, problem(400, "Bad request", "multipart field 'content' is required"), {}

    # -- the "models" --------------------------------------------------------------------------------------
    def fetch(self, url: str) -> Image.Image:
        if url.startswith("data:"):
            data = base64.b64decode(url.partition(",")[2])
        else:
            stored = self.files.get(urlsplit(url).path)
            if stored is None:
                raise ValueError(f"could not download {url}")
            data = stored.data
        return Image.open(io.BytesIO(data)).convert("RGB")

    def _run(self, state: PredictionState) -> None:
        args = state.input
        self._stop(state)
        per_second = (
            TARIFF[state.model][0] == "second"
        )  # predict_time: the billed GPU time, else a fixed 1.25 s
        predict_time = self.gpu_seconds(state) if per_second else 1.25
        state.metrics = {"predict_time": predict_time, "total_time": predict_time + 0.25}
        try:
            if self.fail_prediction:
                raise ValueError(self.fail_prediction)
            if state.model == "nightmareai/real-esrgan":
                source = self.fetch(args["image"])
                scale = float(args.get("scale", 4))
                images = [
                    source.resize(
                        (int(source.width * scale), int(source.height * scale)), Image.Resampling.NEAREST
                    )
                ]
            else:
                images = self._flux(state.model, args)
        except (ValueError, KeyError) as exc:
            state.status, state.error = "failed", str(exc)
            return
        fmt = self.output_format or args.get("output_format", "webp")
        urls = []
        for index, image in enumerate(images):
            buffer = io.BytesIO()
            image.save(buffer, format={"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt], quality=95)
            path = f"/delivery/xezq/{state.id}/out-{index}.{fmt}"
            self.files[path] = StoredFile(f"image/{'jpeg' if fmt == 'jpg' else fmt}", buffer.getvalue())
            urls.append(f"{self.url}{path}")
        state.status = "succeeded"
        state.output = urls[0] if state.model == "nightmareai/real-esrgan" else urls

    def _flux(self, model: str, args: dict[str, Any]) -> list[Image.Image]:
        seed = int(args.get("seed", 4242))
        if model == "bytedance/flux-pulid":
            self.fetch(args["main_face_image"])
            width, height = int(args.get("width", 896)), int(args.get("height", 1152))
        else:
            width, height = size_of(args.get("aspect_ratio", "1:1"), args.get("megapixels", "1"))
        source = self.fetch(args["image"]) if args.get("image") else None
        mask = self.fetch(args["mask"]).convert("L") if args.get("mask") else None
        if source is not None and (mask is not None or "aspect_ratio" not in args):
            width, height = source.size  # FLUX Fill matches the input size
        images = []
        for index in range(int(args.get("num_outputs", 1))):
            drawn = draw(width, height, args["prompt"], seed, index)
            if source is not None and mask is not None:
                drawn = Image.composite(drawn, source.resize((width, height)), mask.resize((width, height)))
            elif source is not None:
                drawn = Image.blend(
                    source.resize((width, height)), drawn, float(args.get("prompt_strength", 0.8))
                )
            images.append(drawn)
        return images


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
            data, content_type = payload, "text/plain"
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
