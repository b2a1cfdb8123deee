"""A local fal.ai that also runs fal's LoRA trainers, on top of tests/providers/fal_server.py.

Same queue and storage protocol (submit → request_id; status IN_QUEUE → IN_PROGRESS with logs → COMPLETED;
result; cancel). Each training "model" downloads the uploaded zip from storage and refuses what its model page
says it refuses: fal-ai/flux-lora-fast-training (`images_data_url`, at least 4 images, steps 1–10000),
fal-ai/qwen-image-trainer (`image_data_url`, images with same-named .txt captions, steps 1–8000),
fal-ai/qwen-image-edit-2509-trainer (`image_data_url`, ROOT_start/ROOT_end pairs with ROOT.txt instructions);
it logs a tqdm bar with the loss while IN_PROGRESS, and answers {diffusers_lora_file, config_file} with a small
real .safetensors LoRA (diffusers keys) and its JSON config in storage.
"""

from __future__ import annotations

import io
import json
import sys
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save

sys.path.insert(0, str(Path(__file__).parents[1] / "providers"))  # share the queue server of the providers

from fal_server import BadInput, FalServer, QueuedRequest, Reply, StoredFile

TRAINING = "fal-ai/flux-lora-fast-training"
QWEN_TRAINING = "fal-ai/qwen-image-trainer"
EDIT_TRAINING = "fal-ai/qwen-image-edit-2509-trainer"
TRAINERS = {
    TRAINING: ("images_data_url", 10_000),
    QWEN_TRAINING: ("image_data_url", 8_000),
    EDIT_TRAINING: ("image_data_url", 10_000),
}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


class FalTrainingServer(FalServer):
    """FalServer plus the trainer endpoint; `pending_polls` decides how long a training "runs"."""

    def __init__(self, key: str = "test-fal-key") -> None:
        super().__init__(key)
        self.trained_on: list[list[str]] = []  # the image names each training found in its zip

    def _status(self, request: QueuedRequest, with_logs: bool) -> Reply:
        if request.endpoint not in TRAINERS:
            return super()._status(request, with_logs)
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
            return 200, {"status": "IN_QUEUE", "queue_position": 0, "logs": None, **urls}, {}
        steps = int(request.arguments.get("steps", 1000))
        running = request.polls - self.queued_polls
        if request.polls <= self.pending_polls and not request.cancelled:
            self._start(request)
            logs = [
                _bar(done, steps)
                for done in _progress(running, steps, self.pending_polls - self.queued_polls)
            ]
            return 200, {"status": "IN_PROGRESS", "logs": logs if with_logs else None, **urls}, {}
        if request.outcome is None:
            request.outcome = (
                (499, {"detail": "Request cancelled"}) if request.cancelled else self._run(request)
            )
            self._stop(request)
        completed: dict[str, Any] = {"status": "COMPLETED", "logs": [] if with_logs else None, **urls}
        completed["metrics"] = {"inference_time": 321.0}
        if request.outcome[0] != 200:
            completed["error"], completed["error_type"] = str(request.outcome[1]["detail"]), "model_error"
        return 200, completed, {}

    def _run(self, request: QueuedRequest) -> tuple[int, Any]:
        if request.endpoint not in TRAINERS:
            return super()._run(request)
        try:
            return 200, self._train(request.endpoint, request.arguments)
        except BadInput as exc:
            return 422, {"detail": exc.detail}

    def _train(self, endpoint: str, arguments: dict[str, Any]) -> dict[str, Any]:
        field, max_steps = TRAINERS[endpoint]
        url = arguments.get(field)
        if not isinstance(url, str):
            raise BadInput(field, "Field required", "missing")
        steps = arguments.get("steps", 1000)
        if not isinstance(steps, int) or not 1 <= steps <= max_steps:
            raise BadInput("steps", f"Input should be between 1 and {max_steps}")
        try:
            with zipfile.ZipFile(io.BytesIO(self.fetch(url, field))) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile:
            raise BadInput(field, "The archive is not a zip file") from None
        images = sorted(n for n in names if Path(n).suffix.lower() in IMAGE_SUFFIXES)
        stems = {Path(n).stem for n in names if n.endswith(".txt")}
        if endpoint == EDIT_TRAINING:
            starts = {Path(n).stem[: -len("_start")] for n in images if Path(n).stem.endswith("_start")}
            ends = {Path(n).stem[: -len("_end")] for n in images if Path(n).stem.endswith("_end")}
            if not starts or starts != ends:
                raise BadInput(
                    field, "The zip should contain pairs of images: ROOT_start.EXT and ROOT_end.EXT"
                )
            if starts - stems and "default_caption" not in arguments:
                raise BadInput(field, "No text file for a pair and no default_caption")
        elif (
            endpoint == QWEN_TRAINING
            and {Path(n).stem for n in images} - stems
            and "trigger_phrase" not in arguments
        ):
            raise BadInput(field, "Each image needs a caption text file, or give trigger_phrase")
        if endpoint != EDIT_TRAINING and len(images) < 4:
            raise BadInput(field, f"At least 4 images are required, found {len(images)}")
        self.trained_on.append(images)
        tensors = {
            "transformer.single_transformer_blocks.0.attn.to_k.lora_A.weight": np.ones((16, 64), np.float32),
            "transformer.single_transformer_blocks.0.attn.to_k.lora_B.weight": np.zeros((64, 16), np.float32),
        }
        lora = save(tensors, metadata={"trigger_word": str(arguments.get("trigger_word", ""))})
        config = json.dumps(
            {"trigger_word": arguments.get("trigger_word"), "steps": steps, "images": len(images)}
        )
        return {
            "diffusers_lora_file": self._store(
                lora, "application/octet-stream", "pytorch_lora_weights.safetensors"
            ),
            "config_file": self._store(config.encode(), "application/json", "config.json"),
            "debug_preprocessed_output": None,
        }

    def _store(self, data: bytes, content_type: str, file_name: str) -> dict[str, Any]:
        file_id = uuid.uuid4().hex
        self.files[file_id] = StoredFile(content_type, data, file_name)
        return {
            "url": f"{self.url}/files/{file_id}",
            "content_type": content_type,
            "file_name": file_name,
            "file_size": len(data),
        }


def _progress(running: int, steps: int, polls: int) -> list[int]:
    """The steps done by the `running`-th IN_PROGRESS answer: the whole log so far, a few bars per poll."""
    done = steps * running // (polls + 1)
    return sorted({max(1, done * k // 3) for k in (1, 2, 3)})


def _bar(done: int, steps: int) -> dict[str, Any]:
    loss = 0.4 / (1 + done / steps)
    bar = f"{100 * done // steps:3d}%|{'█' * (done * 10 // steps):<10}| {done}/{steps} [00:10<00:20, 4.1it/s, loss={loss:.4f}]"
    return {"message": bar, "level": "INFO", "source": "user", "timestamp": "2026-01-01T00:00:00"}
