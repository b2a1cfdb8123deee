"""fal.ai's flux-lora-fast-training through the queue API: upload the zip, submit, remember, poll, download.

Protocol as in providers/fal.py (https://docs.fal.ai/model-endpoints/queue): the dataset zip goes through fal
storage (initiate → signed PUT → file URL), POST {queue}/fal-ai/flux-lora-fast-training answers a
request_id, which is remembered before any waiting so a restart resumes instead of paying twice; status,
result and cancel live under {queue}/fal-ai/flux-lora-fast-training/requests/{id}. The result names
`diffusers_lora_file` and `config_file`; both are copied into the run's checkpoints/ folder. The endpoint
takes the step count and trigger word only: rank, learning rate and optimizer are fal's own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fal_client
import httpx

from flenwheel.config import Settings, secret
from flenwheel.providers.fal import app_path
from flenwheel.trainers.base import (
    CheckpointFile,
    DatasetFormat,
    TrainerError,
    TrainingCancelled,
    TrainingContext,
    TrainingInput,
    TrainingResult,
    TrainingSpec,
)
from flenwheel.trainers.schedule import planned_steps
from flenwheel.trainers.subprocess_run import read_bar

log = logging.getLogger(__name__)

ENDPOINT = "fal-ai/flux-lora-fast-training"
MISSING_KEY = "FAL_KEY is not set: export it or use --trainer local"
# https://fal.ai/models/fal-ai/flux-lora-fast-training lists $2 per 1000 steps (not re-checked from here: no
# internet on the build machine; correct it when fal's page says otherwise).
PRICE_PER_STEP = 0.002
MAX_STEPS = 10_000  # the endpoint's own limit on `steps`
FLUX_MODELS = frozenset({"tiny", "black-forest-labs/FLUX.1-dev", ENDPOINT})  # "tiny" = not chosen: fal's FLUX
TRANSIENT_STATUS = frozenset({408, 409, 425, 429})


class FalTrainer:
    """FLUX.1 [dev] LoRAs trained on fal.ai; the dataset leaves this machine, so no NSFW sets."""

    id = "fal"
    dataset_format: DatasetFormat = "zip"
    allows_nsfw = False

    def __init__(
        self,
        key: str | None,
        queue_url: str = "https://queue.fal.run",
        rest_url: str = "https://rest.fal.ai",
        poll_interval: float = 5.0,
        timeout_s: float = 3 * 3600.0,
    ) -> None:
        self.key = (key or "").strip()
        self.queue_url = queue_url.rstrip("/")
        self.rest_url = rest_url.rstrip("/")
        self.poll_interval = poll_interval
        self.timeout_s = timeout_s
        headers = {"Authorization": f"Key {self.key}", "User-Agent": fal_client.client.USER_AGENT}
        self._api = httpx.Client(
            headers=headers, timeout=httpx.Timeout(120.0, connect=30.0), follow_redirects=True
        )
        # Signed upload URLs and the CDN get no key: it must not travel to other hosts.
        self._plain = httpx.Client(timeout=httpx.Timeout(600.0, connect=30.0), follow_redirects=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> FalTrainer | None:
        """The trainer when FAL_KEY is set, else None."""
        if not secret(settings.fal_key):
            return None
        return cls(secret(settings.fal_key), queue_url=settings.fal_queue_url, rest_url=settings.fal_rest_url)

    def validate(self, spec: TrainingSpec) -> list[str]:
        problems = []
        if not self.key:
            problems.append(MISSING_KEY)
        if spec.family != "flux":
            problems.append("fal trains Flux only: set family flux (--family flux) or use --trainer local")
        if spec.base_model not in FLUX_MODELS:
            problems.append(
                f"fal's {ENDPOINT} trains FLUX.1 [dev] only, not {spec.base_model}: drop --base-model "
                "or use --trainer ai-toolkit / kohya"
            )
        if spec.max_steps is not None and spec.max_steps > MAX_STEPS:
            problems.append(f"fal trains at most {MAX_STEPS} steps: lower --max-steps")
        return problems

    def estimate_cost(self, spec: TrainingSpec, images: int) -> float:
        return round(self.steps(spec, images) * PRICE_PER_STEP, 4)

    def steps(self, spec: TrainingSpec, images: int) -> int:
        return min(MAX_STEPS, planned_steps(spec, images)[0])

    def arguments(self, spec: TrainingSpec, images_url: str, images: int) -> dict[str, Any]:
        """The endpoint's input: the zip, the trigger word (token only), steps; faces get masks."""
        return {
            "images_data_url": images_url,
            "trigger_word": spec.trigger.split()[0],
            "steps": self.steps(spec, images),
            "create_masks": True,
            "is_style": False,
        }

    # -- the run ---------------------------------------------------------------------------------------------
    def run(self, spec: TrainingSpec, data: TrainingInput, ctx: TrainingContext) -> TrainingResult:
        if not self.key:
            raise TrainerError(self.id, MISSING_KEY)
        steps = self.steps(spec, len(data.items))
        handle = self._resume(ctx)
        if handle is None:
            if ctx.cancelled():
                raise TrainingCancelled(f"{self.id}: cancelled before it was submitted")
            images_url = self._upload(data.dataset_dir)
            handle = self._submit(self.arguments(spec, images_url, len(data.items)))
            ctx.remember_remote_id(handle.request_id)  # before any waiting: a restart resumes, never re-pays
        losses = self._wait(handle, steps, ctx)
        with self._errors("fetching the result"):
            output = handle.get(interval=self.poll_interval)
        checkpoint = self._download(output, data.work_dir / "checkpoints", handle.request_id, steps)
        ctx.checkpoint_saved(checkpoint)
        return TrainingResult(
            checkpoints=(checkpoint,),
            losses=tuple(losses),
            total_steps=steps,
            cost_usd=round(steps * PRICE_PER_STEP, 4),
        )

    def _handle(self, request_id: str) -> fal_client.SyncRequestHandle:
        base = f"{self.queue_url}/{app_path(ENDPOINT)}/requests/{request_id}"
        return fal_client.SyncRequestHandle(
            request_id=request_id,
            response_url=base,
            status_url=f"{base}/status",
            cancel_url=f"{base}/cancel",
            client=self._api,
        )

    def _resume(self, ctx: TrainingContext) -> fal_client.SyncRequestHandle | None:
        known = ctx.known_remote_id()
        if not known:
            return None
        handle = self._handle(known)
        try:
            handle.status()
        except fal_client.FalClientHTTPError as exc:
            if exc.status_code == 404:  # fal no longer knows it: nothing runs or bills, so submit again
                log.warning("fal training %s is unknown to fal; submitting again", known)
                return None
            raise self._from_response(exc.response, "resuming the training") from exc
        except httpx.HTTPError as exc:
            raise TrainerError(self.id, f"resuming training {known} failed: {exc}", transient=True) from exc
        return handle

    def _upload(self, archive: Path) -> str:
        """fal storage: initiate → a signed upload URL and the file URL the trainer reads; then PUT the zip."""
        with self._errors("uploading the dataset zip"):
            initiated = self._api.post(
                f"{self.rest_url}/storage/upload/initiate",
                params={"storage_type": "gcs"},
                json={"file_name": archive.name, "content_type": "application/zip"},
            )
            if initiated.status_code >= 400:
                raise self._from_response(initiated, "uploading the dataset zip")
            target = initiated.json()
            stored = self._plain.put(
                target["upload_url"],
                content=archive.read_bytes(),
                headers={"Content-Type": "application/zip"},
            )
            if stored.status_code >= 400:
                raise self._from_response(stored, "uploading the dataset zip")
        return str(target["file_url"])

    def _submit(self, arguments: dict[str, Any]) -> fal_client.SyncRequestHandle:
        with self._errors("submitting the training"):
            response = self._api.post(f"{self.queue_url}/{ENDPOINT}", json=arguments)
        if response.status_code >= 400:
            raise self._from_response(response, "submitting the training")
        return self._handle(str(response.json()["request_id"]))

    def _wait(
        self, handle: fal_client.SyncRequestHandle, steps: int, ctx: TrainingContext
    ) -> list[tuple[int, float]]:
        deadline = time.monotonic() + self.timeout_s
        losses: dict[int, float] = {}
        while True:
            if ctx.cancelled():
                try:
                    handle.cancel()
                except (fal_client.FalClientHTTPError, httpx.HTTPError) as exc:  # e.g. 400 ALREADY_COMPLETED
                    log.warning("could not cancel fal training %s: %s", handle.request_id, exc)
                raise TrainingCancelled(f"{self.id}: training {handle.request_id} cancelled on fal")
            with self._errors("checking the training status"):
                status = handle.status(with_logs=True)
            if isinstance(status, fal_client.InProgress | fal_client.Completed):
                self._report(status.logs, steps, ctx, losses)
            if isinstance(status, fal_client.Completed):
                if status.error:
                    raise TrainerError(self.id, f"training {handle.request_id} failed on fal: {status.error}")
                return sorted(losses.items())
            if time.monotonic() > deadline:
                raise TrainerError(
                    self.id,
                    f"training {handle.request_id} is still running after {self.timeout_s:.0f} s; it is "
                    "remembered, so running the same training again resumes it",
                    transient=True,
                )
            time.sleep(self.poll_interval)

    @staticmethod
    def _report(
        logs: list[dict[str, Any]] | None, steps: int, ctx: TrainingContext, losses: dict[int, float]
    ) -> None:
        latest = None
        for entry in logs or []:
            reading = read_bar(str(entry.get("message", "")), "loss")
            if reading is None or reading.total != steps:
                continue
            if reading.loss is not None:
                losses[reading.n] = reading.loss
            latest = reading
        if latest is not None:
            ctx.progress(latest.n, steps, latest.loss)

    def _download(self, output: dict[str, Any], folder: Path, request_id: str, steps: int) -> CheckpointFile:
        lora = output.get("diffusers_lora_file") or {}
        if not lora.get("url"):
            raise TrainerError(
                self.id, f"training {request_id} finished without a LoRA file: {str(output)[:200]}"
            )
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"fal-{request_id[:8]}.safetensors"
        self._fetch(str(lora["url"]), target)
        config = output.get("config_file") or {}
        if config.get("url"):
            self._fetch(str(config["url"]), target.with_suffix(".json"))
        return CheckpointFile(path=target, step=steps)

    def _fetch(self, url: str, target: Path) -> None:
        with self._errors(f"downloading {target.name}"):
            response = self._plain.get(url)
        if response.status_code >= 400:
            raise self._from_response(response, f"downloading {url}")
        partial = target.with_name(target.name + ".part")
        partial.write_bytes(response.content)
        partial.replace(target)

    # -- errors ----------------------------------------------------------------------------------------------
    def _from_response(self, response: httpx.Response, doing: str) -> TrainerError:
        status = response.status_code
        message = _describe(response)
        transient = status in TRANSIENT_STATUS or status >= 500
        if response.headers.get("x-fal-retryable") in ("true", "false"):
            transient = response.headers["x-fal-retryable"] == "true"
        if status in (401, 403):
            message = f"fal refused the key ({message}): check FAL_KEY at https://fal.ai/dashboard/keys"
        return TrainerError(self.id, f"{doing} failed with HTTP {status}: {message}", transient=transient)

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except fal_client.FalClientHTTPError as exc:
            raise self._from_response(exc.response, doing) from exc
        except httpx.HTTPError as exc:
            raise TrainerError(self.id, f"{doing} failed: cannot reach fal ({exc})", transient=True) from exc


def _describe(response: httpx.Response) -> str:
    """fal's error body in one line: `detail` is a string or a list of {loc, msg}."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(p) for p in item.get('loc', []) if p != 'body')}: {item.get('msg')}"
            if isinstance(item, dict)
            else str(item)
            for item in detail
        )
    return str(detail)[:500]
