"""fal.ai's flux-lora-fast-training through the queue API: upload the zip, submit, remember, poll, download.

Protocol, errors and retries in remote/fal.py, shared with the fal engine (https://docs.fal.ai/model-endpoints/queue): the dataset zip goes through fal
storage (initiate → signed PUT → file URL), POST {queue}/fal-ai/flux-lora-fast-training answers a
request_id, which is remembered before any waiting so a restart resumes instead of paying twice; status,
result and cancel live under {queue}/fal-ai/flux-lora-fast-training/requests/{id}. The result names
`diffusers_lora_file` and `config_file`; both are copied into the run's checkpoints/ folder. The endpoint
takes the step count and trigger word only: rank, learning rate and optimizer are fal's own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
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

ENDPOINT = "fal-ai/flux-lora-fast-training"
MISSING_KEY = "FAL_KEY is not set: export it or use --trainer local"
# https://fal.ai/models/fal-ai/flux-lora-fast-training lists $2 per 1000 steps (not re-checked from here: no
# internet on the build machine; correct it when fal's page says otherwise).
PRICE_PER_STEP = 0.002
MAX_STEPS = 10_000  # the endpoint's own limit on `steps`
FLUX_MODELS = frozenset({"tiny", "black-forest-labs/FLUX.1-dev", ENDPOINT})  # "tiny" = not chosen: fal's FLUX


class FalTrainer:
    """FLUX.1 [dev] LoRAs trained on fal.ai; the dataset leaves this machine, so no NSFW sets."""

    id = "fal"
    dataset_format: DatasetFormat = "zip"
    trains = frozenset({"flux"})  # training architectures (families.py)
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
        if self.client is None:
            raise TrainerError(self.id, MISSING_KEY)
        client = self.client
        steps = self.steps(spec, len(data.items))
        with translated(self._error):
            request_id = self._resume(client, ctx)
            if request_id is None:
                if ctx.cancelled():
                    raise TrainingCancelled(f"{self.id}: cancelled before it was submitted")
                images_url = client.upload(
                    data.dataset_dir.read_bytes(), "application/zip", data.dataset_dir.name
                )
                request_id = client.submit(ENDPOINT, self.arguments(spec, images_url, len(data.items)))
                ctx.remember_remote_id(request_id)  # before any waiting: a restart resumes, never re-pays
            losses = self._wait(client, request_id, steps, ctx)
            output = client.result(ENDPOINT, request_id)  # a failed training answers its error here
            checkpoint = self._download(client, output, data.work_dir / "checkpoints", request_id, steps)
        ctx.checkpoint_saved(checkpoint)
        return TrainingResult(
            checkpoints=(checkpoint,),
            losses=tuple(losses),
            total_steps=steps,
            cost_usd=round(steps * PRICE_PER_STEP, 4),
        )

    def _resume(self, client: FalClient, ctx: TrainingContext) -> str | None:
        """The remembered training when fal still has it and it was not cancelled, else None (submit anew)."""
        known = ctx.known_remote_id()
        if not known:
            return None
        status = client.status(ENDPOINT, known)
        if status is None:  # fal no longer knows it: nothing runs or bills, so submit again
            log.warning("fal training %s is unknown to fal; submitting again", known)
            return None
        if status.done and status.error and "cancel" in status.error.lower():
            log.warning("fal training %s was cancelled; submitting again", known)
            return None
        return known

    def _wait(
        self, client: FalClient, request_id: str, steps: int, ctx: TrainingContext
    ) -> list[tuple[int, float]]:
        losses: dict[int, float] = {}

        def on_status(status: FalStatus) -> None:
            self._report(status.logs, steps, ctx, losses)

        try:
            client.wait(
                ENDPOINT,
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
