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
import re
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import replicate
from replicate.exceptions import ReplicateError
from replicate.identifier import ModelVersionIdentifier
from replicate.training import Training

from flenwheel.config import Settings, secret
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
# here: no internet on the build machine); the estimate assumes ~1 step a second. The result uses the real run time.
PRICE_PER_SECOND = 0.001525
SECONDS_PER_STEP = 1.0
DEFAULT_TRAINER: str = Settings.model_fields["replicate_trainer"].default  # a pinned version
MAX_STEPS = 6000  # ostris/flux-dev-lora-trainer's limit on `steps`
FINISHED = frozenset({"succeeded", "failed", "canceled"})
TRANSIENT_STATUS = frozenset({408, 409, 425, 429})
_OWNER_MODEL = re.compile(r"[a-z0-9][a-z0-9_.-]*/[a-z0-9][a-z0-9_.-]*", re.IGNORECASE)


class ReplicateTrainer:
    """FLUX.1 [dev] LoRAs trained on Replicate into the user's own model; the dataset leaves this machine."""

    id = "replicate"
    dataset_format: DatasetFormat = "zip"
    allows_nsfw = False

    def __init__(
        self,
        token: str | None,
        destination: str | None,
        trainer: str = DEFAULT_TRAINER,
        base_url: str = "https://api.replicate.com/v1",
        poll_interval: float = 5.0,
        timeout_s: float = 3 * 3600.0,
    ) -> None:
        self.token = (token or "").strip()
        self.destination = (destination or "").strip() or None
        self.trainer = trainer
        self.poll_interval = poll_interval
        self.timeout_s = timeout_s
        self.client = replicate.Client(
            api_token=self.token or None,
            base_url=base_url.rstrip("/").removesuffix("/v1"),  # the client adds /v1/… itself
            timeout=httpx.Timeout(120.0, connect=10.0),
        )
        self._plain = httpx.Client(timeout=httpx.Timeout(600.0, connect=30.0), follow_redirects=True)

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

    def estimate_cost(self, spec: TrainingSpec, images: int) -> float:
        return round(self.steps(spec, images) * SECONDS_PER_STEP * PRICE_PER_SECOND, 4)

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
        if problems:
            raise TrainerError(self.id, "; ".join(problems))
        steps = self.steps(spec, len(data.items))
        training = self._resume(ctx)
        if training is None:
            if ctx.cancelled():
                raise TrainingCancelled(f"{self.id}: cancelled before it was created")
            images_url = self._upload(data.dataset_dir)
            training = self._create(self.training_input(spec, images_url, len(data.items)))
            ctx.remember_remote_id(training.id)  # before any waiting: a restart resumes, never re-pays
        training, losses = self._wait(training, steps, ctx)
        if training.status == "failed":
            raise TrainerError(self.id, f"training {training.id} failed on Replicate: {training.error}")
        if training.status == "canceled":
            raise TrainerError(
                self.id, f"training {training.id} was canceled on Replicate; run again to start anew"
            )
        checkpoint = self._download(training, data.work_dir / "checkpoints", steps)
        ctx.checkpoint_saved(checkpoint)
        seconds = _run_seconds(training)
        cost = (
            seconds * PRICE_PER_SECOND if seconds is not None else self.estimate_cost(spec, len(data.items))
        )
        return TrainingResult(
            checkpoints=(checkpoint,), losses=tuple(losses), total_steps=steps, cost_usd=round(cost, 4)
        )

    def _resume(self, ctx: TrainingContext) -> Training | None:
        known = ctx.known_remote_id()
        if not known:
            return None
        try:
            return self.client.trainings.get(known)
        except ReplicateError as exc:
            if exc.status == 404:  # Replicate does not know it: nothing runs or bills, so create it again
                log.warning("Replicate training %s is unknown; creating it again", known)
                return None
            raise self._from_error(exc, "resuming the training") from exc
        except httpx.HTTPError as exc:
            raise TrainerError(self.id, f"resuming training {known} failed: {exc}", transient=True) from exc

    def _upload(self, archive: Path) -> str:
        with self._errors("uploading the dataset zip"), archive.open("rb") as handle:
            uploaded = self.client.files.create(handle, filename=archive.name, content_type="application/zip")
        return str(uploaded.urls["get"])

    def _create(self, training_input: dict[str, Any]) -> Training:
        owner, name, version = ModelVersionIdentifier.parse(self.trainer)
        assert version and self.destination  # run() refuses a trainer without them (validate)
        with self._errors("creating the training"):
            return self.client.trainings.create(
                model=f"{owner}/{name}", version=version, input=training_input, destination=self.destination
            )

    def _wait(
        self, training: Training, steps: int, ctx: TrainingContext
    ) -> tuple[Training, list[tuple[int, float]]]:
        deadline = time.monotonic() + self.timeout_s
        losses: dict[int, float] = {}
        while True:
            _report(training.logs, steps, ctx, losses)
            if training.status in FINISHED:
                return training, sorted(losses.items())
            if ctx.cancelled():
                try:
                    self.client.trainings.cancel(training.id)
                except (ReplicateError, httpx.HTTPError) as exc:
                    log.warning("could not cancel Replicate training %s: %s", training.id, exc)
                raise TrainingCancelled(f"{self.id}: training {training.id} canceled on Replicate")
            if time.monotonic() > deadline:
                raise TrainerError(
                    self.id,
                    f"training {training.id} is still running after {self.timeout_s:.0f} s; it is remembered, "
                    "so running the same training again resumes it",
                    transient=True,
                )
            time.sleep(self.poll_interval)
            with self._errors("checking the training"):
                training = self.client.trainings.get(training.id)

    def _download(self, training: Training, folder: Path, steps: int) -> CheckpointFile:
        output = training.output if isinstance(training.output, dict) else {}
        url = output.get("weights")
        if not isinstance(url, str):
            raise TrainerError(
                self.id, f"training {training.id} finished without weights: {str(output)[:200]}"
            )
        with self._errors("downloading the weights"):
            response = self._plain.get(url)
        if response.status_code >= 400:
            transient = response.status_code in TRANSIENT_STATUS or response.status_code >= 500
            raise TrainerError(
                self.id, f"downloading {url} failed with HTTP {response.status_code}", transient=transient
            )
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"replicate-{training.id[:12]}.safetensors"
        data = response.content
        if _is_tar(data):  # ostris/flux-dev-lora-trainer answers a .tar around the LoRA
            data = _safetensors_from_tar(data, self.id, url)
        partial = target.with_name(target.name + ".part")
        partial.write_bytes(data)
        partial.replace(target)
        if output.get("version"):
            target.with_suffix(".version.txt").write_text(str(output["version"]) + "\n")
        return CheckpointFile(path=target, step=steps)

    # -- errors ----------------------------------------------------------------------------------------------
    def _from_error(self, exc: ReplicateError, doing: str) -> TrainerError:
        status = exc.status or 0
        message = (exc.detail or exc.title or "no detail given").strip()
        transient = status in TRANSIENT_STATUS or status >= 500
        if status in (401, 403):
            message = (
                f"Replicate refused the token ({message}): check REPLICATE_API_TOKEN at "
                "https://replicate.com/account/api-tokens"
            )
        elif status == 404 and doing == "creating the training":
            message = (
                f"{message}: does the destination {self.destination} exist? Create it at "
                "https://replicate.com/create; and is FLENWHEEL_REPLICATE_TRAINER a published version?"
            )
        return TrainerError(self.id, f"{doing} failed with HTTP {status}: {message}", transient=transient)

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except ReplicateError as exc:
            raise self._from_error(exc, doing) from exc
        except httpx.HTTPError as exc:
            raise TrainerError(
                self.id, f"{doing} failed: cannot reach Replicate ({exc})", transient=True
            ) from exc


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
