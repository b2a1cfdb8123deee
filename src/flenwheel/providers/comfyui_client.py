"""The ComfyUI HTTP + WebSocket client: upload, queue under our own prompt_id, resume, progress, outputs.

See comfyui.py for how a request becomes a workflow; this module only speaks the server's protocol.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from enum import Enum
from typing import TYPE_CHECKING, Any

import httpx

from flenwheel.domain import Frozen
from flenwheel.providers.base import (
    Cancelled,
    ProviderContext,
    ProviderError,
)

if TYPE_CHECKING:
    pass

PROVIDER_ID = "comfyui"
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
            raise comfy_error(
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

    def object_info(self) -> dict[str, Any]:
        """The server's node catalogue: every node class with its inputs (types, ranges, choices) and outputs."""
        response = self._request("GET", "/object_info")
        if response.status_code != 200:
            raise comfy_error(f"GET /object_info answered HTTP {response.status_code}", transient=True)
        body = response.json()
        return body if isinstance(body, dict) else {}

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
            raise comfy_error(
                f"prompt {prompt_id} finished but is not in the server's history", transient=True
            )
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
            raise comfy_error(
                f"the server refused the prompt (HTTP {response.status_code}): {response.text[:300]}"
            )
        raise comfy_error(describe_rejection(payload))

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
                        raise comfy_error(
                            f"the server no longer knows prompt {prompt_id} (restarted, or its queue was "
                            "cleared); retry to queue it again",
                            transient=True,
                        )
                if now > deadline:
                    raise comfy_error(
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
            raise comfy_error(
                f"{data.get('node_type')} (node {data.get('node_id')}) failed: "
                f"{data.get('exception_type', 'error')}: {str(data.get('exception_message', '')).strip()}"
            )
        if kind == "execution_interrupted":
            raise comfy_error(f"prompt {prompt_id} was interrupted on the server", transient=True)
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
                    raise comfy_error(f"could not download {image['filename']} (HTTP {response.status_code})")
                images.append(response.content)
        if not images:
            raise comfy_error(f"prompt {prompt_id} saved no images: the workflow needs a SaveImage node")
        return tuple(images)

    def _connect(self, client_id: str) -> Any:
        import websocket  # websocket-client

        url = "ws" + self.url.removeprefix("http") + f"/ws?clientId={client_id}"
        try:
            socket = websocket.create_connection(url, timeout=10)
        except (websocket.WebSocketException, OSError) as exc:
            raise comfy_error(
                f"cannot open {url} ({exc}): is the ComfyUI server running?", transient=True
            ) from None
        socket.settimeout(0.25)  # short, so that a cancel is noticed quickly
        return socket

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise comfy_error(
                f"{method} {path} timed out ({exc or type(exc).__name__})", transient=True
            ) from None
        except httpx.TransportError as exc:
            raise comfy_error(
                f"cannot reach the ComfyUI server at {self.url} ({exc}): start it, or fix FLENWHEEL_COMFYUI_URL",
                transient=True,
            ) from None
        if response.status_code >= 500:
            raise comfy_error(f"{method} {path} failed with HTTP {response.status_code}", transient=True)
        return response


def _receive(socket: Any) -> tuple[str, dict[str, Any]] | None:
    """The next JSON message, or None when none came in the socket's timeout (binary previews are skipped)."""
    import websocket

    try:
        frame = socket.recv()
    except websocket.WebSocketTimeoutException:
        return None
    except (websocket.WebSocketException, OSError) as exc:
        raise comfy_error(
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


def comfy_error(message: str, transient: bool = False) -> ProviderError:
    return ProviderError(PROVIDER_ID, message, transient=transient)


# --- requests → workflows ------------------------------------------------------------------------------
