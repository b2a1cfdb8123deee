"""Replicate trainings: upload the zip, train a FLUX LoRA into the user's destination model, download the weights.

Protocol (https://replicate.com/docs/reference/http#trainings.create): POST /v1/files (the zip) →
POST /v1/models/{owner}/{name}/versions/{version}/trainings {destination, input} → 201 training; GET
/v1/trainings/{id} until succeeded/failed/canceled; POST /v1/trainings/{id}/cancel. A succeeded training's
output is {version: "<destination>:<id>", weights: URL of a .tar holding the .safetensors (or the file
itself)}. The training id is remembered before any waiting, so a restart resumes instead of paying twice.
Input names are those of ostris/flux-dev-lora-trainer (input_images, trigger_word, steps, lora_rank, …).
"""

from __future__ import annotations

import io
import logging
import math
import re
import tarfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from replicate.identifier import ModelVersionIdentifier
from replicate.training import Training

from flenwheel.config import Settings, secret
from flenwheel.remote.errors import RemoteCancelled, RemoteError, translated
from flenwheel.remote.replicate import ReplicateClient
from flenwheel.remote.waiting import CANCEL_GRACE_S
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

MISSING_TOKEN = "REPLICATE_API_TOKEN is not set: export it or use --trainer local"
MISSING_DESTINATION = (
    "FLENWHEEL_REPLICATE_DESTINATION is not set: create a model to receive the LoRA at "
    "https://replicate.com/create and set FLENWHEEL_REPLICATE_DESTINATION=owner/model"
)
# Replicate bills the trainer's H100 time, $0.001525/s on https://replicate.com/pricing (not re-checked from
# here: no internet on the build machine). ostris/flux-dev-lora-trainer runs ~1 step a second on an H100 after
# a few minutes of setup (its model page: 1000 steps in ~20 min, downloads included); the estimate is the
# worst case allowed — setup plus 2 s a step — and a training still running then is cancelled, so billed ≤
# estimate. The result uses the real run time.
PRICE_PER_SECOND = 0.001525
SETUP_SECONDS = 600.0
WORST_SECONDS_PER_STEP = 2.0
DEFAULT_TRAINER: str = Settings.model_fields["replicate_trainer"].default  # a pinned version
MAX_STEPS = 6000  # ostris/flux-dev-lora-trainer's limit on `steps`
_OWNER_MODEL = re.compile(r"[a-z0-9][a-z0-9_.-]*/[a-z0-9][a-z0-9_.-]*", re.IGNORECASE)


class ReplicateTrainer:
    """FLUX.1 [dev] LoRAs trained on Replicate into the user's own model; the dataset leaves this machine."""

    id = "replicate"
    dataset_format: DatasetFormat = "zip"
    trains = frozenset({"flux"})  # training architectures (families.py)
    allows_nsfw = False

    paid = True  # Replicate bills every training: reserve `estimate_cost` before `run`

    def __init__(
        self,
        token: str | None,
        destination: str | None,
        trainer: str = DEFAULT_TRAINER,
        base_url: str = "https://api.replicate.com/v1",
        poll_interval: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,  # between retries (Retry-After) and polls
        setup_seconds: float = SETUP_SECONDS,
        seconds_per_step: float = WORST_SECONDS_PER_STEP,
    ) -> None:
        self.token = (token or "").strip()
        # The worst case the estimate pays for, and the limit after which a training is cancelled.
        self.setup_seconds = setup_seconds
        self.seconds_per_step = seconds_per_step
        self.destination = (destination or "").strip() or None
        self.trainer = trainer
        self.poll_interval = poll_interval
        self.client = (
            ReplicateClient(self.token, base_url=base_url, sleep=sleep, transfer_timeout_s=600.0)
            if self.token
            else None
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> ReplicateTrainer | None:
        """The trainer when REPLICATE_API_TOKEN is set, else None (a missing destination is a validate problem)."""
        if not secret(settings.replicate_api_token):
            return None
        return cls(
            secret(settings.replicate_api_token),
            settings.replicate_destination,
            trainer=settings.replicate_trainer,
            base_url=settings.replicate_base_url,
        )

    def validate(self, spec: TrainingSpec) -> list[str]:
        problems = []
        if not self.token:
            problems.append(MISSING_TOKEN)
        if self.destination is None:
            problems.append(MISSING_DESTINATION)
        elif not _OWNER_MODEL.fullmatch(self.destination):
            problems.append(
                f"FLENWHEEL_REPLICATE_DESTINATION={self.destination!r} is not owner/model: e.g. alice/maya-lora"
            )
        try:
            _, _, version = ModelVersionIdentifier.parse(self.trainer)
        except ValueError:
            version = None
        if not version:
            problems.append(
                f"FLENWHEEL_REPLICATE_TRAINER={self.trainer!r} needs a version: owner/name:version "
                "(see the trainer's Versions tab on replicate.com)"
            )
        if spec.family != "flux":
            problems.append(
                "Replicate's trainer trains Flux only: set family flux (--family flux) or use --trainer local"
            )
        if spec.max_steps is not None and spec.max_steps > MAX_STEPS:
            problems.append(
                f"{self.trainer.split(':')[0]} trains at most {MAX_STEPS} steps: lower --max-steps"
            )
        return problems

    def steps(self, spec: TrainingSpec, images: int) -> int:
        return max(3, min(MAX_STEPS, planned_steps(spec, images)[0]))

    def max_seconds(self, spec: TrainingSpec, images: int) -> float:
        """How long a training may run before it is cancelled: what `estimate_cost` pays for."""
        return self.setup_seconds + self.steps(spec, images) * self.seconds_per_step

    def estimate_cost(self, spec: TrainingSpec, images: int) -> float:
        """The most a training can cost in USD: H100 seconds up to its time limit (rounded up to the cent)."""
        seconds = self.max_seconds(spec, images) + CANCEL_GRACE_S
        return math.ceil(seconds * PRICE_PER_SECOND * 100) / 100

    def training_input(self, spec: TrainingSpec, images_url: str, images: int) -> dict[str, Any]:
        """The trainer's input: our zip with its captions (no autocaption), trigger word, steps, rank, LR."""
        return {
            "input_images": images_url,
            "trigger_word": spec.trigger.split()[0],
            "autocaption": False,  # the zip's .txt captions are the reviewed ones
            "steps": self.steps(spec, images),
            "lora_rank": spec.rank,
            "learning_rate": spec.learning_rate,
            "batch_size": spec.batch_size,
            "resolution": str(spec.resolution),
            "optimizer": spec.optimizer,
        }

    # -- the run ---------------------------------------------------------------------------------------------
    def run(self, spec: TrainingSpec, data: TrainingInput, ctx: TrainingContext) -> TrainingResult:
        problems = self.validate(spec)
        if problems or self.client is None or self.destination is None:
            raise TrainerError(self.id, "; ".join(problems))
        client, destination = self.client, self.destination
        steps = self.steps(spec, len(data.items))
        with translated(self._error):
            training = self._resume(client, ctx)
            if training is None:
                if ctx.cancelled():
                    raise TrainingCancelled(f"{self.id}: cancelled before it was created")
                with data.dataset_dir.open("rb") as archive:
                    images_url = client.upload(archive, data.dataset_dir.name, "application/zip")
                training = self._create(
                    client, destination, self.training_input(spec, images_url, len(data.items))
                )
                ctx.remember_remote_id(training.id)  # before any waiting: a restart resumes, never re-pays
            training, losses = self._wait(
                client, training, steps, self.max_seconds(spec, len(data.items)), ctx
            )
            if training.status == "failed":
                raise TrainerError(self.id, f"training {training.id} failed on Replicate: {training.error}")
            if training.status == "canceled":
                raise TrainerError(
                    self.id, f"training {training.id} was canceled on Replicate; run again to start anew"
                )
            checkpoint = self._download(client, training, data.work_dir / "checkpoints", steps)
        ctx.checkpoint_saved(checkpoint)
        seconds = _run_seconds(training)
        cost = (
            seconds * PRICE_PER_SECOND if seconds is not None else self.estimate_cost(spec, len(data.items))
        )
        return TrainingResult(
            checkpoints=(checkpoint,), losses=tuple(losses), total_steps=steps, cost_usd=round(cost, 4)
        )

    def _resume(self, client: ReplicateClient, ctx: TrainingContext) -> Training | None:
        """The remembered training unless Replicate forgot it or it was canceled (then: create anew)."""
        known = ctx.known_remote_id()
        if not known:
            return None
        training = client.training(known)
        if training is None:  # Replicate does not know it: nothing runs or bills, so create it again
            log.warning("Replicate training %s is unknown; creating it again", known)
        elif training.status == "canceled":
            log.warning("Replicate training %s was canceled; creating it again", known)
            return None
        return training

    def _create(self, client: ReplicateClient, destination: str, training_input: dict[str, Any]) -> Training:
        try:
            return client.create_training(self.trainer, destination, training_input)
        except RemoteError as exc:
            if exc.status != 404:
                raise
            raise TrainerError(
                self.id,
                f"{exc.message}: does the destination {destination} exist? Create it at "
                "https://replicate.com/create; and is FLENWHEEL_REPLICATE_TRAINER a published version?",
            ) from exc

    def _wait(
        self,
        client: ReplicateClient,
        training: Training,
        steps: int,
        max_seconds: float,
        ctx: TrainingContext,
    ) -> tuple[Training, list[tuple[int, float]]]:
        losses: dict[int, float] = {}
        try:
            finished = client.wait(
                training,
                cancelled=ctx.cancelled,
                on_update=lambda state: _report(state.logs, steps, ctx, losses),
                poll_interval=self.poll_interval,
                max_seconds=max_seconds,
                limit_hint="lower --max-steps, or give the trainer a larger seconds_per_step (and estimate)",
            )
        except RemoteCancelled as exc:
            raise TrainingCancelled(f"{self.id}: training {training.id} canceled on Replicate") from exc
        return finished, sorted(losses.items())

    def _download(
        self, client: ReplicateClient, training: Training, folder: Path, steps: int
    ) -> CheckpointFile:
        output = training.output if isinstance(training.output, dict) else {}
        url = output.get("weights")
        if not isinstance(url, str):
            raise TrainerError(
                self.id, f"training {training.id} finished without weights: {str(output)[:200]}"
            )
        data = client.download(url)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"replicate-{training.id[:12]}.safetensors"
        if _is_tar(data):  # ostris/flux-dev-lora-trainer answers a .tar around the LoRA
            data = _safetensors_from_tar(data, self.id, url)
        partial = target.with_name(target.name + ".part")
        partial.write_bytes(data)
        partial.replace(target)
        if output.get("version"):
            target.with_suffix(".version.txt").write_text(str(output["version"]) + "\n")
        return CheckpointFile(path=target, step=steps)

    def _error(self, message: str, transient: bool) -> TrainerError:
        return TrainerError(self.id, message, transient=transient)


def _report(logs: str | None, steps: int, ctx: TrainingContext, losses: dict[int, float]) -> None:
    """The trainer's logs hold ai-toolkit's tqdm bar; report the newest reading of the training bar."""
    latest = None
    for line in re.split(r"[\r\n]", logs or ""):
        reading = read_bar(line, "loss")
        if reading is None or reading.total != steps:
            continue
        if reading.loss is not None:
            losses[reading.n] = reading.loss
        latest = reading
    if latest is not None:
        ctx.progress(latest.n, steps, latest.loss)


def _is_tar(data: bytes) -> bool:
    return len(data) > 262 and data[257:262] == b"ustar"


def _safetensors_from_tar(data: bytes, trainer: str, url: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        members = [m for m in archive.getmembers() if m.isfile() and m.name.endswith(".safetensors")]
        if not members:
            raise TrainerError(trainer, f"{url} holds no .safetensors file")
        extracted = archive.extractfile(members[0])
        assert extracted is not None
        return extracted.read()


def _run_seconds(training: Training) -> float | None:
    if not training.started_at or not training.completed_at:
        return None
    try:
        started = datetime.fromisoformat(training.started_at.replace("Z", "+00:00"))
        completed = datetime.fromisoformat(training.completed_at.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0.0, (completed - started).total_seconds())
