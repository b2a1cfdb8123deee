"""A local Replicate that also runs trainings, on top of tests/providers/replicate_server.py.

https://replicate.com/docs/reference/http#trainings.create: POST /v1/models/{owner}/{name}/versions/{version}
/trainings {destination, input} → 201 training ("starting"); the destination must be an existing model
(404 otherwise) and the version a published one of that trainer (422 otherwise). GET /v1/trainings/{id} →
starting → processing (logs: ai-toolkit's tqdm bar with the loss) → succeeded with output {version:
"<destination>:<new id>", weights: a .tar on the delivery host holding output/flux_train_replicate/lora
.safetensors} or failed (error). POST /v1/trainings/{id}/cancel → the training, "canceled". Files come
through the same POST /v1/files as predictions' inputs; the trainer downloads input_images from there.
Billing: H100 time at $0.001525/s from started_at until completed_at (finished or canceled). The clock is
simulated: each GET answered "processing" is `seconds_per_poll` of training, so the run is deterministic.
"""

from __future__ import annotations

import io
import re
import sys
import tarfile
import uuid
import zipfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from safetensors.numpy import save

sys.path.insert(0, str(Path(__file__).parents[1] / "providers"))  # share the API server of the providers

from replicate_server import NOW, ReplicateServer, Reply, StoredFile, problem

PRICE_PER_SECOND = 0.001525  # H100, https://replicate.com/pricing
STARTED = datetime(2026, 1, 1, 0, 0, 5)
TRAINER = "ostris/flux-dev-lora-trainer"
TRAINER_VERSION = "e440909d3512c31646ee2e0c7d6f6f4923224863a6a10c494606e79fb5844497"
INPUT_TYPES = {
    "input_images": str, "trigger_word": str, "autocaption": bool, "steps": int, "lora_rank": int,
    "learning_rate": float, "batch_size": int, "resolution": str, "optimizer": str,
}  # fmt: skip


@dataclass
class TrainingState:
    id: str
    destination: str
    input: dict[str, Any]
    polls: int = 0
    status: str = "starting"
    logs: str = ""
    output: Any = None
    error: str | None = None
    started: bool = False
    run_seconds: float = 0.0  # simulated H100 time so far


class ReplicateTrainingServer(ReplicateServer):
    """ReplicateServer plus trainings; `destinations` are the models that exist, `pending_polls` the run length."""

    def __init__(self, token: str = "r8_test_token") -> None:
        super().__init__(token)
        self.destinations = {"alice/maya-lora"}
        self.trainings: dict[str, TrainingState] = {}
        self.training_creations: list[dict[str, Any]] = []
        self.trained_on: list[list[str]] = []
        self.seconds_per_poll = 400.0  # three "processing" answers: a 20-minute training

    def billed_usd(self, training_id: str) -> float:
        """What Replicate has charged for the training so far (it bills while it runs)."""
        return self.trainings[training_id].run_seconds * PRICE_PER_SECOND

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Reply:
        path = urlsplit(target).path
        created = re.fullmatch(r"/v1/models/([^/]+/[^/]+)/versions/([^/]+)/trainings", path)
        found = re.fullmatch(r"/v1/trainings/([^/]+)(/cancel)?", path)
        if not (created or found) or headers.get("authorization") != f"Bearer {self.token}":
            return super().handle(method, target, headers, body)
        if created and method == "POST":
            return self._scripted("create_training") or self._create_training(
                created.group(1), created.group(2), body
            )
        assert found is not None
        state = self.trainings.get(found.group(1))
        if state is None:
            return 404, problem(404, "Not found", "The requested resource could not be found."), {}
        if method == "GET" and not found.group(2):
            return self._get_training(state)
        if method == "POST" and found.group(2):
            self.cancels.append(state.id)
            if state.status in ("starting", "processing"):
                state.status = "canceled"
            return 200, self._training_json(state), {}
        return 404, problem(404, "Not found", f"{method} {path} is not part of this API"), {}

    def _training_json(self, state: TrainingState) -> dict[str, Any]:
        base = f"{self.url}/v1/trainings/{state.id}"
        finished = state.status in ("succeeded", "failed", "canceled")
        return {
            "id": state.id,
            "model": TRAINER,
            "version": TRAINER_VERSION,
            "destination": state.destination,
            "input": state.input,
            "logs": state.logs,
            "output": state.output,
            "error": state.error,
            "status": state.status,
            "created_at": NOW,
            "started_at": _stamp(STARTED) if state.started else None,
            "completed_at": _stamp(STARTED + timedelta(seconds=state.run_seconds)) if finished else None,
            "urls": {"get": base, "cancel": f"{base}/cancel", "web": f"https://replicate.com/p/{state.id}"},
        }

    def _create_training(self, model: str, version: str, body: bytes) -> Reply:
        import json

        request = json.loads(body)
        self.training_creations.append(request)
        if model != TRAINER or version != TRAINER_VERSION:
            return (
                422,
                problem(422, "Invalid version or not permitted", "The specified version does not exist"),
                {},
            )
        destination = request.get("destination")
        if destination not in self.destinations:
            return 404, problem(404, "Not found", f"The destination model {destination} does not exist"), {}
        model_input = request.get("input")
        if not isinstance(model_input, dict) or not model_input.get("input_images"):
            detail = "- input: input_images is required\n"
            return 422, problem(422, "Input validation failed", detail), {}
        for name, value in model_input.items():
            expected = INPUT_TYPES.get(name)
            if (
                expected is None
                or not isinstance(value, expected)
                or (expected is int and isinstance(value, bool))
            ):
                detail = f"- input.{name}: Invalid type or unknown field\n"
                return 422, problem(422, "Input validation failed", detail), {}
        state = TrainingState(uuid.uuid4().hex[:26], destination, model_input)
        self.trainings[state.id] = state
        return 201, self._training_json(state), {}

    def _get_training(self, state: TrainingState) -> Reply:
        state.polls += 1
        scripted = self._scripted("get_training")
        if scripted:
            return scripted
        if state.status in ("starting", "processing"):
            steps = int(state.input.get("steps", 1000))
            if state.polls <= self.pending_polls:
                state.status, state.started = "processing", True
                state.run_seconds += self.seconds_per_poll
                done = steps * state.polls // (self.pending_polls + 1)
                loss = 0.45 / (1 + done / steps)
                bar = (
                    f"\rflux_train_replicate: {100 * done // steps:3d}%|{'█' * (done * 10 // steps):<10}| "
                    f"{done}/{steps} [00:10<00:20,  1.01it/s, lr: 4.0e-04 loss: {loss:.3e}]"
                )
                state.logs += bar
            else:
                self._train(state)
        return 200, self._training_json(state), {}

    def _train(self, state: TrainingState) -> None:
        try:
            stored = self.files.get(urlsplit(state.input["input_images"]).path)
            if stored is None:
                raise ValueError(f"could not download {state.input['input_images']}")
            with zipfile.ZipFile(io.BytesIO(stored.data)) as archive:
                images = sorted(
                    n for n in archive.namelist() if n.lower().endswith((".jpg", ".jpeg", ".png"))
                )
            if self.fail_prediction:
                raise ValueError(self.fail_prediction)
        except (ValueError, zipfile.BadZipFile) as exc:
            state.status, state.error = "failed", str(exc)
            return
        self.trained_on.append(images)
        rank = int(state.input.get("lora_rank", 16))
        lora = save(
            {
                "transformer.single_transformer_blocks.0.attn.to_k.lora_A.weight": np.ones(
                    (rank, 64), np.float32
                ),
                "transformer.single_transformer_blocks.0.attn.to_k.lora_B.weight": np.zeros(
                    (64, rank), np.float32
                ),
            },
            metadata={"trigger_word": str(state.input.get("trigger_word", ""))},
        )
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            member = tarfile.TarInfo("output/flux_train_replicate/lora.safetensors")
            member.size = len(lora)
            archive.addfile(member, io.BytesIO(lora))
        path = f"/delivery/xezq/{state.id}/trained_model.tar"
        self.files[path] = StoredFile("application/x-tar", buffer.getvalue())
        state.status = "succeeded"
        state.output = {"version": f"{state.destination}:{uuid.uuid4().hex}", "weights": f"{self.url}{path}"}


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
