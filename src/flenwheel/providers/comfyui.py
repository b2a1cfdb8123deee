"""ComfyUI: runs API-format workflows (providers/workflows/*.json) on a ComfyUI server the user runs.

One request travels like this. Input images are uploaded (POST /upload/image, content-addressed names, so
a retry uploads nothing new); the request's workflow template is filled in; and it is queued (POST /prompt)
under a prompt_id that *we* choose and persist through `ctx.remember_remote_id` first. ComfyUI takes a
client-supplied prompt_id as it is (server.py, post_prompt) but does not refuse one it already has, so a
retry first looks the id up in /history and /queue and queues nothing when the server knows it. Progress
comes over the WebSocket (/ws?clientId=<prompt_id>: the server sends a prompt's messages only to the client
id it was queued with, so a resumed attempt gets them too), the images from /view, and the engine's own
execution time from the history's status timestamps. Cancelling removes the prompt from the queue and
interrupts it if it is running.

Models are files in the server's models folders, named relative to them. With `models_dir` (the server's
models folder, reachable from here: a local server's `--base-directory`/models, or a shared mount) a
LoraRef's file — or a checkpoint given as a path — is placed there once, under a content-addressed name in a
`flenwheel/` subfolder, before the prompt names it. Without `models_dir`, LoRAs must already be in the
server's loras folder under their own file names.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from flenwheel.domain import Frozen
from flenwheel.errors import ImageRejected
from flenwheel.images import decode_image, encode_png
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
)
from flenwheel.providers.pricing import PriceTable

if TYPE_CHECKING:
    from flenwheel.config import Settings

PROVIDER_ID = "comfyui"
WORKFLOWS_DIR = Path(__file__).with_name("workflows")
STAGING_FOLDER = "flenwheel"  # subfolder of the server's input/ and models/ folders that flenwheel writes to
_SAMPLERS = {"KSampler", "KSamplerAdvanced"}
_POLL_S = 2.0  # with no message for this long, ask the server directly whether the prompt is still there
_CUSTOM_NODES = {  # node classes the built-in workflows use beyond core ComfyUI, and where they come from
    "IPAdapterUnifiedLoaderFaceID": "ComfyUI_IPAdapter_plus (github.com/cubiq/ComfyUI_IPAdapter_plus)",
    "IPAdapterFaceID": "ComfyUI_IPAdapter_plus (github.com/cubiq/ComfyUI_IPAdapter_plus)",
}
_log = logging.getLogger(__name__)


class WorkflowRun(Frozen):
    """What one finished workflow gave back."""

    prompt_id: str
    images: tuple[bytes, ...]  # every SaveImage output, in execution order
    engine_seconds: float | None  # execution_start → end, from the server's own timestamps
    queued: bool  # False when an earlier attempt's prompt was found on the server and only awaited


class _Where(Enum):
    DONE = "done"  # in /history with an outcome
    WAITING = "waiting"  # pending or running in /queue
    ABSENT = "absent"  # never queued, lost in a server restart, or interrupted


class ComfyUIClient:
    """HTTP + WebSocket client for one ComfyUI server: upload, queue under our own prompt_id, wait, download."""

    def __init__(self, url: str, *, timeout_s: float = 3600.0, request_timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s  # how long one prompt may take, queue time included
        self._http = httpx.Client(base_url=self.url, timeout=request_timeout_s)

    def close(self) -> None:
        self._http.close()

    # --- plain requests -------------------------------------------------------------------------------

    def upload_image(self, data: bytes) -> str:
        """Put an image in the server's input folder; returns the name a LoadImage node takes."""
        name = hashlib.sha256(data).hexdigest()[:32] + ".png"
        response = self._request(
            "POST",
            "/upload/image",
            files={"image": (name, data, "image/png")},
            data={"subfolder": STAGING_FOLDER, "type": "input", "overwrite": "true"},
        )
        if response.status_code != 200:
            raise _error(
                f"the server refused an image upload (HTTP {response.status_code}): {response.text[:200]}"
            )
        body = response.json()
        return f"{body['subfolder']}/{body['name']}" if body.get("subfolder") else str(body["name"])

    def models(self, folder: str) -> list[str]:
        """File names in one of the server's model folders (checkpoints, loras, upscale_models, …)."""
        response = self._request("GET", f"/models/{folder}")
        if response.status_code == 404:
            return []
        return [str(name) for name in response.json()]

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        entry = self._request("GET", f"/history/{prompt_id}").json().get(prompt_id)
        return entry if isinstance(entry, dict) else None

    def queued_ids(self) -> tuple[set[str], set[str]]:
        """(running, pending) prompt ids."""
        queue = self._request("GET", "/queue").json()
        return (
            {str(item[1]) for item in queue.get("queue_running", [])},
            {str(item[1]) for item in queue.get("queue_pending", [])},
        )

    def cancel(self, prompt_id: str, settle_s: float = 5.0) -> None:
        """Drop the prompt from the queue, or interrupt it if it runs; returns once it no longer runs."""
        self._request("POST", "/queue", json={"delete": [prompt_id]})
        deadline = time.monotonic() + settle_s
        while True:
            # The server reads the interrupt flag between nodes and sampler steps, and clears it when a
            # prompt starts: one that started just now may miss it, so ask again until it has stopped.
            self._request("POST", "/interrupt", json={"prompt_id": prompt_id})
            running, _ = self.queued_ids()
            if prompt_id not in running or time.monotonic() > deadline:
                return
            time.sleep(0.1)

    # --- one workflow, start to finish ----------------------------------------------------------------

    def run(self, prompt: dict[str, Any], ctx: ProviderContext, prompt_id: str | None = None) -> WorkflowRun:
        """Queue `prompt` (once, ever, per id), wait for it while reporting progress, return its images."""
        known = ctx.known_remote_id()
        prompt_id = prompt_id or known or str(uuid.uuid4())
        if prompt_id != known:
            ctx.remember_remote_id(prompt_id)  # before queueing: a restart must find it, not queue again
        socket = self._connect(prompt_id)  # before queueing, so that no message is missed
        try:
            where = self._resume(prompt_id) if known == prompt_id else _Where.ABSENT
            if where is _Where.ABSENT:
                if ctx.cancelled():
                    raise Cancelled(PROVIDER_ID)
                self._queue(prompt, prompt_id)
            if where is not _Where.DONE:
                self._wait(socket, prompt, prompt_id, ctx)
            else:
                ctx.progress(1, 1)
        finally:
            socket.close()
        entry = self.history(prompt_id)
        if entry is None:
            raise _error(f"prompt {prompt_id} finished but is not in the server's history", transient=True)
        return WorkflowRun(
            prompt_id=prompt_id,
            images=self._outputs(entry, prompt_id),
            engine_seconds=_engine_seconds(entry),
            queued=where is _Where.ABSENT,
        )

    def _where(self, prompt_id: str) -> _Where:
        if self.history(prompt_id) is not None:
            return _Where.DONE
        running, pending = self.queued_ids()
        return _Where.WAITING if prompt_id in running | pending else _Where.ABSENT

    def _resume(self, prompt_id: str) -> _Where:
        """Where an earlier attempt's prompt is; one it interrupted (a cancel, then a retry) is run again."""
        where = self._where(prompt_id)
        entry = self.history(prompt_id) if where is _Where.DONE else None
        if entry is not None and _outcome(entry)[0] == "execution_interrupted":
            self._request("POST", "/history", json={"delete": [prompt_id]})  # a clean record for the rerun
            return _Where.ABSENT
        return where

    def _queue(self, prompt: dict[str, Any], prompt_id: str) -> None:
        body = {"prompt": prompt, "prompt_id": prompt_id, "client_id": prompt_id}
        response = self._request("POST", "/prompt", json=body)
        try:
            payload = response.json()
        except ValueError:
            payload = {}
        if response.status_code == 200 and not payload.get("node_errors"):
            return
        if response.status_code == 200:  # some outputs were valid and got queued: take them back out
            self.cancel(prompt_id)
        if response.status_code not in (200, 400):
            raise _error(
                f"the server refused the prompt (HTTP {response.status_code}): {response.text[:300]}"
            )
        raise _error(describe_rejection(payload))

    def _wait(self, socket: Any, prompt: dict[str, Any], prompt_id: str, ctx: ProviderContext) -> None:
        progress = _Progress(prompt)
        deadline = time.monotonic() + self.timeout_s
        last_heard = time.monotonic()
        while True:
            if ctx.cancelled():
                try:
                    self.cancel(prompt_id)
                except ProviderError as exc:  # the user still gets their cancel; the server may finish it
                    _log.warning("could not cancel ComfyUI prompt %s: %s", prompt_id, exc)
                raise Cancelled(PROVIDER_ID)
            message = _receive(socket)
            now = time.monotonic()
            if message is None:
                if now - last_heard >= _POLL_S:
                    last_heard = now
                    where = self._where(prompt_id)
                    if where is _Where.DONE:
                        return
                    if where is _Where.ABSENT:
                        raise _error(
                            f"the server no longer knows prompt {prompt_id} (restarted, or its queue was "
                            "cleared); retry to queue it again",
                            transient=True,
                        )
                if now > deadline:
                    raise _error(
                        f"prompt {prompt_id} did not finish within {self.timeout_s:.0f} s; it may still run "
                        "on the server, and a retry picks it up instead of queueing it again",
                        transient=True,
                    )
                continue
            last_heard = now
            kind, data = message
            if data.get("prompt_id") != prompt_id:
                continue
            if kind == "executing" and data.get("node") is None:
                ctx.progress(progress.total, progress.total)
                return
            if progress.update(kind, data):
                ctx.progress(progress.done, progress.total)

    def _outputs(self, entry: dict[str, Any], prompt_id: str) -> tuple[bytes, ...]:
        kind, data = _outcome(entry)
        if kind == "execution_error":
            raise _error(
                f"{data.get('node_type')} (node {data.get('node_id')}) failed: "
                f"{data.get('exception_type', 'error')}: {str(data.get('exception_message', '')).strip()}"
            )
        if kind == "execution_interrupted":
            raise _error(f"prompt {prompt_id} was interrupted on the server", transient=True)
        images = []
        for output in (entry.get("outputs") or {}).values():
            for image in output.get("images", []):
                if image.get("type") != "output":
                    continue  # previews (type "temp") are not results
                params = {
                    "filename": image["filename"],
                    "subfolder": image.get("subfolder", ""),
                    "type": "output",
                }
                response = self._request("GET", "/view", params=params)
                if response.status_code != 200:
                    raise _error(f"could not download {image['filename']} (HTTP {response.status_code})")
                images.append(response.content)
        if not images:
            raise _error(f"prompt {prompt_id} saved no images: the workflow needs a SaveImage node")
        return tuple(images)

    def _connect(self, client_id: str) -> Any:
        import websocket  # websocket-client

        url = "ws" + self.url.removeprefix("http") + f"/ws?clientId={client_id}"
        try:
            socket = websocket.create_connection(url, timeout=10)
        except (websocket.WebSocketException, OSError) as exc:
            raise _error(
                f"cannot open {url} ({exc}): is the ComfyUI server running?", transient=True
            ) from None
        socket.settimeout(0.25)  # short, so that a cancel is noticed quickly
        return socket

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise _error(f"{method} {path} timed out ({exc or type(exc).__name__})", transient=True) from None
        except httpx.TransportError as exc:
            raise _error(
                f"cannot reach the ComfyUI server at {self.url} ({exc}): start it, or fix FLENWHEEL_COMFYUI_URL",
                transient=True,
            ) from None
        if response.status_code >= 500:
            raise _error(f"{method} {path} failed with HTTP {response.status_code}", transient=True)
        return response


def _receive(socket: Any) -> tuple[str, dict[str, Any]] | None:
    """The next JSON message, or None when none came in the socket's timeout (binary previews are skipped)."""
    import websocket

    try:
        frame = socket.recv()
    except websocket.WebSocketTimeoutException:
        return None
    except (websocket.WebSocketException, OSError) as exc:
        raise _error(
            f"lost the connection to the server ({exc}); a retry resumes the prompt", transient=True
        ) from None
    if not isinstance(frame, str):
        return None
    try:
        message = json.loads(frame)
    except ValueError:
        return None
    data = message.get("data")
    return str(message.get("type")), data if isinstance(data, dict) else {}


class _Progress:
    """Turns ComfyUI's per-node progress into one done/total count: a node counts 1, a sampler its steps."""

    def __init__(self, prompt: dict[str, Any]) -> None:
        self.size = {
            node_id: float(node["inputs"].get("steps", 1)) if node.get("class_type") in _SAMPLERS else 1.0
            for node_id, node in prompt.items()
        }
        self.value = dict.fromkeys(self.size, 0.0)
        self._reported = (-1, -1)

    @property
    def done(self) -> int:
        return min(int(sum(self.value.values())), self.total)

    @property
    def total(self) -> int:
        return max(int(sum(self.size.values())), 1)

    def update(self, kind: str, data: dict[str, Any]) -> bool:
        """Fold in one message; True when the counts changed."""
        if kind == "execution_cached":
            for node_id in data.get("nodes") or []:
                if node_id in self.size:
                    self.value[node_id] = self.size[node_id]
        elif kind == "progress_state":  # ComfyUI ≥ 0.3.4x: every started node with value/max/state
            for node_id, state in (data.get("nodes") or {}).items():
                self._set(node_id, float(state.get("value", 0)), float(state.get("max", 1)))
        elif kind == "progress":  # older servers: steps of the running node only
            self._set(str(data.get("node")), float(data.get("value", 0)), float(data.get("max", 1)))
        counts = (self.done, self.total)
        changed = counts != self._reported
        self._reported = counts
        return changed

    def _set(self, node_id: str, value: float, maximum: float) -> None:
        if node_id not in self.size:
            return  # a node expanded at run time; its parent's count stands for it
        if maximum > 1:
            self.size[node_id] = maximum
        self.value[node_id] = max(self.value[node_id], value / maximum * self.size[node_id])


def _outcome(entry: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The last execution_success/_error/_interrupted status message of a history entry."""
    for kind, data in reversed((entry.get("status") or {}).get("messages") or []):
        if kind in ("execution_success", "execution_error", "execution_interrupted"):
            return str(kind), data
    return "unknown", {}


def _engine_seconds(entry: dict[str, Any]) -> float | None:
    messages = (entry.get("status") or {}).get("messages") or []
    start = next((data.get("timestamp") for kind, data in messages if kind == "execution_start"), None)
    end = _outcome(entry)[1].get("timestamp")
    if start is None or end is None:
        return None
    return max(0.0, (end - start) / 1000)


def describe_rejection(payload: dict[str, Any]) -> str:
    """A one-paragraph reason from a /prompt 400 answer (`error` + `node_errors`), with the fix where known."""
    error = payload.get("error") or {}
    message = str(error.get("message", "the prompt was rejected")) if isinstance(error, dict) else str(error)
    for class_type, pack in _CUSTOM_NODES.items():
        if f"node {class_type} does not exist" in message:
            return f"{message} It comes from the {pack} custom nodes: install them (and their models) on the server."
    problems = []
    for node_id, node in (payload.get("node_errors") or {}).items():
        for problem in node.get("errors", []):
            problems.append(
                f"node {node_id} ({node.get('class_type')}): {problem.get('details') or problem.get('message')}"
            )
    if not problems:
        return f"{message}: {error.get('details', '')}".rstrip(": ")
    hint = ""
    if any("not in list" in problem for problem in problems):
        hint = " Put the named file in the server's models folder, or pick one the server lists."
    return f"the server rejected the workflow — {'; '.join(problems)}.{hint}"


def _error(message: str, transient: bool = False) -> ProviderError:
    return ProviderError(PROVIDER_ID, message, transient=transient)


# --- requests → workflows ------------------------------------------------------------------------------


@dataclass
class _Workflow:
    """A filled-in copy of one template; nodes are addressed by their ids ("sampler", "checkpoint", …)."""

    name: str
    nodes: dict[str, Any]

    def set(self, node_id: str, field: str, value: Any) -> None:
        node = self.nodes.get(node_id)
        if node is None:
            raise _error(f"workflow {self.name}.json has no node {node_id!r}: restore it or add the node")
        node["inputs"][field] = value

    def add_loras(self, names: list[tuple[str, float]]) -> None:
        """Chain LoraLoader nodes after the checkpoint and point its MODEL/CLIP consumers at the last one."""
        if names and "checkpoint" not in self.nodes:
            raise _error(f"LoRAs do not apply to the {self.name} workflow", transient=False)
        source = "checkpoint"
        chain = []
        for index, (name, strength) in enumerate(names):
            node_id = f"lora_{index}"
            chain.append(node_id)
            self.nodes[node_id] = {
                "class_type": "LoraLoader",
                "inputs": {
                    "model": [source, 0],
                    "clip": [source, 1],
                    "lora_name": name,
                    "strength_model": strength,
                    "strength_clip": strength,
                },
            }
            source = node_id
        if source == "checkpoint":
            return
        for node_id, node in self.nodes.items():
            if node_id in chain:
                continue
            for field, value in node["inputs"].items():
                if (
                    isinstance(value, list)
                    and len(value) == 2
                    and value[0] == "checkpoint"
                    and value[1] in (0, 1)
                ):
                    node["inputs"][field] = [source, value[1]]


class ComfyUIProvider:
    """Image generation on the user's own ComfyUI server (text, image-to-image, inpaint, upscale, identity)."""

    id = PROVIDER_ID
    allows_nsfw = True  # the user's own server: nothing leaves machines they control
    capabilities = frozenset(
        {
            Capability.TEXT_TO_IMAGE,
            Capability.IMAGE_TO_IMAGE,
            Capability.INPAINT,
            Capability.UPSCALE,
            Capability.IDENTITY_REFERENCE,  # needs ComfyUI_IPAdapter_plus on the server (workflows/README.md)
            Capability.LORA,
        }
    )

    def __init__(
        self,
        url: str,
        *,
        models_dir: Path | None = None,
        checkpoint: str | None = None,
        upscale_model: str | None = None,
        workflows_dir: Path | None = None,
        prices: PriceTable | None = None,
        timeout_s: float = 3600.0,
    ) -> None:
        self.client = ComfyUIClient(url, timeout_s=timeout_s)
        self.models_dir = models_dir
        self.checkpoint = checkpoint
        self.upscale_model = upscale_model
        self.workflows_dir = workflows_dir or WORKFLOWS_DIR
        self.prices = prices or PriceTable.load()
        self._hashes: dict[tuple[str, int, int], str] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> ComfyUIProvider | None:
        """The provider for `settings.comfyui_url`, or None when no server is configured."""
        if not settings.comfyui_url:
            return None
        return cls(
            settings.comfyui_url,
            models_dir=settings.comfyui_models_dir,
            checkpoint=settings.comfyui_checkpoint,
            upscale_model=settings.comfyui_upscale_model,
            prices=PriceTable.load(settings.prices),
        )

    def estimate_cost(self, request: GenerationRequest) -> float:
        width, height = getattr(request, "width", 512), getattr(request, "height", 512)
        return self.prices.price(self.id, request.model or "*").cost(request.count, width, height)

    def generate(self, request: GenerationRequest, ctx: ProviderContext) -> GenerationResult:
        prompt_id = ctx.known_remote_id() or str(uuid.uuid4())
        # A seed we pick is derived from the prompt id, so a resumed attempt records the seed that ran.
        seed = request.seed if request.seed is not None else _seed_from(prompt_id)
        workflow, model = self.workflow(request, seed)
        run = self.client.run(workflow.nodes, ctx, prompt_id)
        images = []
        for data in run.images:
            width, height = _png_size(data)
            images.append(
                GeneratedImage(
                    data=data,
                    width=width,
                    height=height,
                    seed=None if isinstance(request, Upscale) else seed,  # a batch shares one seed
                )
            )
        return GenerationResult(
            images=tuple(images),
            provider=self.id,
            model=model,
            cost_usd=self.estimate_cost(request),
            remote_id=run.prompt_id,
            engine_seconds=run.engine_seconds,
        )

    def workflow(self, request: GenerationRequest, seed: int) -> tuple[_Workflow, str]:
        """The filled-in workflow for a request, and the model it names. Uploads inputs and places files."""
        workflow = self._template(request.kind)
        if isinstance(request, Upscale):
            model = self._model_name(request.model, "upscale_models", self.upscale_model)
            source = _prepared(request.image)
            workflow.set("image", "image", self.client.upload_image(encode_png(source)))
            workflow.set("upscale_model", "model_name", model)
            workflow.set("resize", "width", source.width * request.factor)
            workflow.set("resize", "height", source.height * request.factor)
            workflow.add_loras([(self._place(lora.path, "loras"), lora.strength) for lora in request.loras])
            return workflow, model
        model = self._model_name(request.model, "checkpoints", self.checkpoint)
        workflow.set("checkpoint", "ckpt_name", model)
        workflow.set("positive", "text", request.prompt)
        workflow.set("negative", "text", request.negative)
        for field, value in (("seed", seed), ("steps", request.steps), ("cfg", request.guidance)):
            workflow.set("sampler", field, value)
        if isinstance(request, TextToImage | IdentityReference):
            workflow.set("latent", "width", request.width)
            workflow.set("latent", "height", request.height)
            workflow.set("latent", "batch_size", request.count)
        if isinstance(request, ImageToImage | Inpaint):
            size = (request.width, request.height)
            workflow.set(
                "image", "image", self.client.upload_image(encode_png(_prepared(request.image, size)))
            )
            workflow.set("latent", "amount", request.count)
            workflow.set("sampler", "denoise", request.strength)
        if isinstance(request, Inpaint):
            mask = _prepared(request.mask, (request.width, request.height))
            workflow.set("mask", "image", self.client.upload_image(encode_png(mask)))
            workflow.set("originals", "amount", request.count)
        if isinstance(request, IdentityReference):
            self._add_references(workflow, request.references)
            workflow.set("faceid", "weight", request.identity_strength)
            workflow.set("faceid", "weight_faceidv2", request.identity_strength)
        workflow.add_loras([(self._place(lora.path, "loras"), lora.strength) for lora in request.loras])
        return workflow, model

    def _template(self, kind: str) -> _Workflow:
        path = self.workflows_dir / f"{kind}.json"
        try:
            nodes = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise _error(f"cannot read the {kind} workflow {path}: {exc}") from None
        return _Workflow(name=kind, nodes=copy.deepcopy(nodes))

    def _add_references(self, workflow: _Workflow, references: tuple[bytes, ...]) -> None:
        """One LoadImage per reference, joined into one batch with ImageBatch nodes."""
        names = [self.client.upload_image(encode_png(_prepared(data))) for data in references]
        workflow.set("reference", "image", names[0])
        batch = "reference"
        for index, name in enumerate(names[1:], start=1):
            workflow.nodes[f"reference_{index}"] = {"class_type": "LoadImage", "inputs": {"image": name}}
            workflow.nodes[f"references_{index}"] = {
                "class_type": "ImageBatch",
                "inputs": {"image1": [batch, 0], "image2": [f"reference_{index}", 0]},
            }
            batch = f"references_{index}"
        workflow.set("faceid", "image", [batch, 0])

    def _model_name(self, model: str | None, folder: str, default: str | None) -> str:
        """A model named by the request (a server-side name, or a local file we place), else the default."""
        if model and self.models_dir is not None and Path(model).expanduser().is_file():
            return self._place(model, folder)
        return model or default or self._first_model(folder)

    def _first_model(self, folder: str) -> str:
        names = sorted(self.client.models(folder))
        if not names:
            raise _error(
                f"the ComfyUI server has no {folder}: put one in its models/{folder} folder, or name one "
                "in the request's model"
            )
        return names[0]

    def _place(self, path: str, folder: str) -> str:
        """The server-side name of a model file: placed in `models_dir/folder/flenwheel/` when we can."""
        if path.startswith(("http://", "https://")):
            raise _error(f"{path}: download the LoRA first; ComfyUI loads only files in its models folders")
        source = Path(path).expanduser()
        if self.models_dir is None:
            if source.name not in self.client.models(folder):
                raise _error(
                    f"{source.name} is not in the ComfyUI server's {folder} folder: copy it there, or set "
                    "FLENWHEEL_COMFYUI_MODELS_DIR to the server's models folder so flenwheel places it"
                )
            return source.name
        if not source.is_file():
            raise _error(f"{path} does not exist or is not a file")
        name = f"{source.stem}-{self._digest(source)[:16]}{source.suffix}"
        target = self.models_dir / folder / STAGING_FOLDER / name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(source, target)
        return f"{STAGING_FOLDER}/{name}"

    def _digest(self, path: Path) -> str:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in self._hashes:
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            self._hashes[key] = digest.hexdigest()
        return self._hashes[key]


def _prepared(data: bytes, size: tuple[int, int] | None = None) -> Any:
    """An input image decoded safely (and resized to the request's size), as a PIL image."""
    from PIL import Image

    try:
        image = decode_image(data).image
    except ImageRejected as exc:
        raise _error(f"an input image was rejected: {exc.detail}") from None
    if size is not None and image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image


def _png_size(data: bytes) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError) as exc:
        raise _error(f"the server returned an image that cannot be read ({exc})") from None


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link when on the same file system (instant, no space), else a copy; atomic either way."""
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".placing-"))
    try:
        temporary = staging / target.name
        try:
            os.link(source, temporary)
        except OSError:
            shutil.copyfile(source, temporary)
        os.replace(temporary, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _seed_from(prompt_id: str) -> int:
    try:
        return uuid.UUID(prompt_id).int % 2**32
    except ValueError:
        return int.from_bytes(hashlib.sha256(prompt_id.encode()).digest()[:4], "big")
