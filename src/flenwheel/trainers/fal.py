"""fal.ai's LoRA trainers through the queue API: upload the zip, submit, remember, poll, download.

Protocol, errors and retries in remote/fal.py, shared with the fal engine (https://docs.fal.ai/model-endpoints/queue):
the dataset zip goes through fal storage (initiate → signed PUT → file URL), POST {queue}/{endpoint} answers a
request_id, which is remembered before any waiting so a restart resumes instead of paying twice; status, result
and cancel live under {queue}/{endpoint}/requests/{id}. The result names `diffusers_lora_file` and `config_file`;
both are copied into the run's checkpoints/ folder. One endpoint per training architecture (`ENDPOINTS`):

- flux: fal-ai/flux-lora-fast-training — the zip of images + captions, the trigger word and the steps (rank,
  learning rate and optimizer are fal's own).
- qwen-image: fal-ai/qwen-image-trainer — images + captions, steps, learning rate, trigger phrase.
- qwen-image-edit: fal-ai/qwen-image-edit-2509-trainer — an editor LoRA from ROOT_start / ROOT_end pairs with
  ROOT.txt instructions (datasets/corrections.py's fal export), steps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flenwheel.config import Settings, secret
from flenwheel.remote.errors import RemoteCancelled, translated
from flenwheel.remote.fal import FalClient, FalStatus
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

MISSING_KEY = "FAL_KEY is not set: export it or use --trainer local"


@dataclass(frozen=True)
class FalTrainingEndpoint:
    """One fal trainer: what it trains, what it takes, what it costs (its model page, cited in `source`; not
    re-checked from the build machine, which has no internet — override with a price file when fal changes)."""

    id: str
    family: str  # the training architecture (families.py)
    base_models: frozenset[str]  # what it trains; "tiny" = the user chose none (fal's own)
    price_per_step: float  # USD
    min_billed_steps: int  # fal charges at least this many steps
    max_steps: int
    source: str

    def cost(self, steps: int) -> float:
        return round(max(steps, self.min_billed_steps) * self.price_per_step, 4)

    def arguments(self, spec: TrainingSpec, data_url: str, steps: int) -> dict[str, Any]:
        """The endpoint's own input schema."""
        if self.family == "flux":  # faces get masks; the trigger word is the token only
            return {
                "images_data_url": data_url,
                "trigger_word": spec.trigger.split()[0],
                "steps": steps,
                "create_masks": True,
                "is_style": False,
            }
        if self.family == "qwen-image":
            return {
                "image_data_url": data_url,
                "steps": steps,
                "learning_rate": spec.learning_rate,
                "trigger_phrase": spec.trigger.split()[0],
            }
        return {"image_data_url": data_url, "steps": steps}  # an editor: the pairs carry their instructions


FLUX_TRAINING = "fal-ai/flux-lora-fast-training"
ENDPOINTS: dict[str, FalTrainingEndpoint] = {
    "flux": FalTrainingEndpoint(
        FLUX_TRAINING,
        "flux",
        frozenset({"tiny", "black-forest-labs/FLUX.1-dev", FLUX_TRAINING}),
        0.002,
        0,
        10_000,
        "https://fal.ai/models/fal-ai/flux-lora-fast-training: $2 per 1000 steps",
    ),
    "qwen-image": FalTrainingEndpoint(
        "fal-ai/qwen-image-trainer",
        "qwen-image",
        frozenset({"tiny", "Qwen/Qwen-Image", "fal-ai/qwen-image-trainer"}),
        0.002,
        250,
        8_000,
        "https://fal.ai/models/fal-ai/qwen-image-trainer: $0.002 per step, at least 250 steps charged",
    ),
    "qwen-image-edit": FalTrainingEndpoint(
        "fal-ai/qwen-image-edit-2509-trainer",
        "qwen-image-edit",
        frozenset({"tiny", "Qwen/Qwen-Image-Edit-2509", "fal-ai/qwen-image-edit-2509-trainer"}),
        0.004,
        100,
        10_000,
        "https://fal.ai/models/fal-ai/qwen-image-edit-2509-trainer: $4 per 1000 steps, 100 steps at least",
    ),
}


class FalTrainer:
    """LoRAs trained on fal.ai (FLUX.1 [dev], Qwen-Image, and Qwen-Image-Edit-2509 editors); the dataset leaves
    this machine, so no NSFW sets."""

    id = "fal"
    dataset_format: DatasetFormat = "zip"
    trains = frozenset(ENDPOINTS)  # training architectures (families.py)
    allows_nsfw = False

    paid = True  # fal bills every training: reserve `estimate_cost` before `run`

    def __init__(
        self,
        key: str | None,
        queue_url: str = "https://queue.fal.run",
        rest_url: str = "https://rest.fal.ai",
        poll_interval: float = 5.0,
        timeout_s: float = 3 * 3600.0,
        sleep: Callable[[float], None] = time.sleep,  # between retries (Retry-After) and polls
    ) -> None:
        self.key = (key or "").strip()
        self.poll_interval = poll_interval
        self.timeout_s = timeout_s  # the longest wait on one training before it is cancelled on fal
        self.client = (
            FalClient(self.key, queue_url=queue_url, rest_url=rest_url, sleep=sleep) if self.key else None
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> FalTrainer | None:
        """The trainer when FAL_KEY is set, else None."""
        if not secret(settings.fal_key):
            return None
        return cls(secret(settings.fal_key), queue_url=settings.fal_queue_url, rest_url=settings.fal_rest_url)

    def endpoint(self, spec: TrainingSpec) -> FalTrainingEndpoint:
        """The fal trainer for the spec's architecture. Raises TrainerError for one fal does not train."""
        if spec.family not in ENDPOINTS:
            raise TrainerError(self.id, f"fal does not train {spec.family}: {', '.join(sorted(ENDPOINTS))}")
        return ENDPOINTS[spec.family]

    def validate(self, spec: TrainingSpec) -> list[str]:
        problems = []
        if not self.key:
            problems.append(MISSING_KEY)
        if spec.family not in ENDPOINTS:
            problems.append(
                f"fal trains {', '.join(sorted(ENDPOINTS))}, not {spec.family}: set --family or use "
                "--trainer ai-toolkit / local"
            )
            return problems
        endpoint = ENDPOINTS[spec.family]
        if spec.base_model not in endpoint.base_models:
            named = sorted(endpoint.base_models - {"tiny", endpoint.id})
            problems.append(
                f"fal's {endpoint.id} trains {', '.join(named)} only, not {spec.base_model}: drop --base-model "
                "or use --trainer ai-toolkit / kohya"
            )
        if spec.max_steps is not None and spec.max_steps > endpoint.max_steps:
            problems.append(
                f"fal's {endpoint.id} trains at most {endpoint.max_steps} steps: lower --max-steps"
            )
        return problems

    def estimate_cost(self, spec: TrainingSpec, images: int) -> float:
        endpoint = ENDPOINTS.get(spec.family, ENDPOINTS["flux"])
        return endpoint.cost(self.steps(spec, images))

    def steps(self, spec: TrainingSpec, images: int) -> int:
        endpoint = ENDPOINTS.get(spec.family, ENDPOINTS["flux"])
        return min(endpoint.max_steps, planned_steps(spec, images)[0])

    def arguments(self, spec: TrainingSpec, images_url: str, images: int) -> dict[str, Any]:
        """The endpoint's input for this spec (see FalTrainingEndpoint.arguments)."""
        return self.endpoint(spec).arguments(spec, images_url, self.steps(spec, images))

    # -- the run ---------------------------------------------------------------------------------------------
    def run(self, spec: TrainingSpec, data: TrainingInput, ctx: TrainingContext) -> TrainingResult:
        if self.client is None:
            raise TrainerError(self.id, MISSING_KEY)
        client = self.client
        endpoint = self.endpoint(spec)
        steps = self.steps(spec, len(data.items))
        with translated(self._error):
            request_id = self._resume(client, ctx, endpoint.id)
            if request_id is None:
                if ctx.cancelled():
                    raise TrainingCancelled(f"{self.id}: cancelled before it was submitted")
                images_url = client.upload(
                    data.dataset_dir.read_bytes(), "application/zip", data.dataset_dir.name
                )
                request_id = client.submit(endpoint.id, self.arguments(spec, images_url, len(data.items)))
                ctx.remember_remote_id(request_id)  # before any waiting: a restart resumes, never re-pays
            losses = self._wait(client, endpoint.id, request_id, steps, ctx)
            output = client.result(endpoint.id, request_id)  # a failed training answers its error here
            checkpoint = self._download(client, output, data.work_dir / "checkpoints", request_id, steps)
        ctx.checkpoint_saved(checkpoint)
        return TrainingResult(
            checkpoints=(checkpoint,),
            losses=tuple(losses),
            total_steps=steps,
            cost_usd=endpoint.cost(steps),
        )

    def _resume(self, client: FalClient, ctx: TrainingContext, endpoint: str) -> str | None:
        """The remembered training when fal still has it and it was not cancelled, else None (submit anew)."""
        known = ctx.known_remote_id()
        if not known:
            return None
        status = client.status(endpoint, known)
        if status is None:  # fal no longer knows it: nothing runs or bills, so submit again
            log.warning("fal training %s is unknown to fal; submitting again", known)
            return None
        if status.done and status.error and "cancel" in status.error.lower():
            log.warning("fal training %s was cancelled; submitting again", known)
            return None
        return known

    def _wait(
        self, client: FalClient, endpoint: str, request_id: str, steps: int, ctx: TrainingContext
    ) -> list[tuple[int, float]]:
        losses: dict[int, float] = {}

        def on_status(status: FalStatus) -> None:
            self._report(status.logs, steps, ctx, losses)

        try:
            client.wait(
                endpoint,
                request_id,
                cancelled=ctx.cancelled,
                on_status=on_status,
                poll_interval=self.poll_interval,
                max_seconds=self.timeout_s,
                limit_hint="give the trainer a longer timeout_s",
            )
        except RemoteCancelled as exc:
            raise TrainingCancelled(f"{self.id}: training {request_id} cancelled on fal") from exc
        return sorted(losses.items())

    @staticmethod
    def _report(
        logs: tuple[dict[str, Any], ...], steps: int, ctx: TrainingContext, losses: dict[int, float]
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

    def _download(
        self, client: FalClient, output: dict[str, Any], folder: Path, request_id: str, steps: int
    ) -> CheckpointFile:
        lora = output.get("diffusers_lora_file") or {}
        if not lora.get("url"):
            raise TrainerError(
                self.id, f"training {request_id} finished without a LoRA file: {str(output)[:200]}"
            )
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"fal-{request_id[:8]}.safetensors"
        _write(client.download(str(lora["url"])), target)
        config = output.get("config_file") or {}
        if config.get("url"):
            _write(client.download(str(config["url"])), target.with_suffix(".json"))
        return CheckpointFile(path=target, step=steps)

    def _error(self, message: str, transient: bool) -> TrainerError:
        return TrainerError(self.id, message, transient=transient)


def _write(data: bytes, target: Path) -> None:
    partial = target.with_name(target.name + ".part")
    partial.write_bytes(data)
    partial.replace(target)
