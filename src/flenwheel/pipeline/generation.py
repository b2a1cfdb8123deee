"""Generate, edit and upscale for a character: route the request, store every output with its provenance.

Each output becomes an asset (kind generated / edited / upscaled) with prompt, seed, provider, model, LoRAs,
cost, timings and NSFW score, written into the PNG as an A1111 `parameters` chunk and a `flenwheel` JSON chunk.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from flenwheel.domain import AssetKind
from flenwheel.images import embed_provenance, output_parameters
from flenwheel.providers.base import GenerationRequest, GenerationResult, ImageProvider, Upscale
from flenwheel.providers.registry import ProviderRegistry
from flenwheel.providers.router import Router, is_nsfw
from flenwheel.providers.tiny_model import TINY_MODEL_ID, TINY_NOTE
from flenwheel.store.budget import CharacterBudget
from flenwheel.store.models import Asset, RemoteJob
from flenwheel.store.project import Project, get_character


@dataclass(frozen=True)
class StoredOutput:
    asset_id: int
    file: Path
    sha256: str
    width: int
    height: int
    seed: int | None
    provider: str
    model: str
    cost_usd: float
    nsfw_score: float | None


@dataclass(frozen=True)
class GenerationOutcome:
    outputs: list[StoredOutput]
    provider: str
    model: str
    cost_usd: float
    nsfw_routing: bool
    note: str | None  # e.g. that the tiny model draws no faces


class StoredContext:
    """Keeps the engine's job id in the database before waiting, keyed by a fingerprint of the request."""

    def __init__(
        self,
        project: Project,
        fingerprint: str,
        provider: str,
        on_progress: Callable[[int, int], None] | None,
    ) -> None:
        self.project = project
        self.fingerprint = f"{provider}:{fingerprint}"[:64]
        self.provider = provider
        self.on_progress = on_progress

    def progress(self, done: int, total: int) -> None:
        if self.on_progress is not None:
            self.on_progress(done, total)

    def cancelled(self) -> bool:
        return False

    def remember_remote_id(self, remote_id: str) -> None:
        with self.project.db.session() as session:
            job = session.scalar(select(RemoteJob).where(RemoteJob.fingerprint == self.fingerprint))
            if job is None:
                session.add(
                    RemoteJob(fingerprint=self.fingerprint, provider=self.provider, remote_id=remote_id)
                )
            else:
                job.remote_id, job.status = remote_id, "running"

    def known_remote_id(self) -> str | None:
        with self.project.db.session() as session:
            job = session.scalar(
                select(RemoteJob).where(
                    RemoteJob.fingerprint == self.fingerprint, RemoteJob.status == "running"
                )
            )
            return job.remote_id if job else None

    def finish(self, status: str) -> None:
        with self.project.db.session() as session:
            job = session.scalar(select(RemoteJob).where(RemoteJob.fingerprint == self.fingerprint))
            if job is not None:
                job.status = status


def request_fingerprint(request: GenerationRequest) -> str:
    """Stable across runs for the same request (seed included): how a rerun finds an interrupted job.
    Input images enter by their sha256."""

    def plain(value: Any) -> Any:
        if isinstance(value, bytes):
            return hashlib.sha256(value).hexdigest()
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [plain(item) for item in value]
        return value

    return hashlib.sha256(json.dumps(plain(request.model_dump()), sort_keys=True).encode()).hexdigest()


def run_generation(
    project: Project,
    character_name: str,
    request: GenerationRequest,
    kind: AssetKind = AssetKind.GENERATED,
    parents: tuple[int, ...] = (),
    preferred: str | None = None,
    providers: list[ImageProvider] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> GenerationOutcome:
    """Route one request within the character's budget and NSFW policy, and store what comes back."""
    with project.db.session() as session:
        character = get_character(session, character_name)
        character_id, character_nsfw = character.id, character.nsfw
    if request.seed is None and not isinstance(request, Upscale):
        import random

        request = request.model_copy(update={"seed": random.SystemRandom().randrange(2**32)})
    nsfw = is_nsfw(request, character_nsfw)
    router = Router(
        providers if providers is not None else ProviderRegistry.from_settings(project.settings).all()
    )
    fingerprint = request_fingerprint(request)
    contexts: dict[str, StoredContext] = {}

    def context_for(provider_id: str) -> StoredContext:
        contexts[provider_id] = StoredContext(project, fingerprint, provider_id, on_progress)
        return contexts[provider_id]

    budget = CharacterBudget(project.db, character_id, character_name)
    try:
        result = router.run(request, context_for, nsfw, budget=budget, preferred=preferred)
    except BaseException:
        for context in contexts.values():
            if context.known_remote_id() is None:
                context.finish("failed")
        raise
    contexts[result.provider].finish("done")
    outputs = _store_outputs(project, character_id, request, result, kind, parents)
    note = TINY_NOTE if result.model == TINY_MODEL_ID else None
    return GenerationOutcome(outputs, result.provider, result.model, result.cost_usd, nsfw, note)


def _store_outputs(
    project: Project,
    character_id: int,
    request: GenerationRequest,
    result: GenerationResult,
    kind: AssetKind,
    parents: tuple[int, ...],
) -> list[StoredOutput]:
    from flenwheel.safety import classify_image

    share = round(result.cost_usd / len(result.images), 6)
    loras = [(lora.path, lora.strength) for lora in request.loras]
    outputs = []
    for image in result.images:
        verdict = classify_image(image.data)
        record = {
            "kind": kind.value,
            "parents": list(parents),
            "prompt": request.prompt,
            "negative": request.negative,
            "seed": image.seed,
            "provider": result.provider,
            "model": result.model,
            "loras": [{"path": path, "strength": strength} for path, strength in loras],
            "denoise": getattr(request, "strength", None),
            "cost_usd": share,
            "nsfw_score": round(verdict.score, 4),
            "remote_id": result.remote_id,
        }
        parameters = output_parameters(request, image.seed, image.width, image.height, result.model)
        png = embed_provenance(image.data, parameters, record)
        sha256 = project.blobs.put(png)
        with project.db.session() as session:
            asset = session.scalar(
                select(Asset).where(Asset.character_id == character_id, Asset.source_sha256 == sha256)
            )
            if asset is None:  # the same seed on the same engine gives the same pixels: one asset
                asset = Asset(
                    character_id=character_id,
                    kind=kind,
                    sha256=sha256,
                    source_sha256=sha256,
                    source_name=f"{kind.value}-{image.seed if image.seed is not None else sha256[:8]}.png",
                    format="png",
                    width=image.width,
                    height=image.height,
                    parents=list(parents),
                    prompt=request.prompt,
                    negative=request.negative,
                    seed=image.seed,
                    provider=result.provider,
                    model=result.model,
                    loras=record["loras"],
                    denoise=record["denoise"],
                    cost_usd=share,
                    timings={"engine_seconds": result.engine_seconds, "remote_id": result.remote_id},
                    nsfw_score=record["nsfw_score"],
                )
                session.add(asset)
                session.flush()
            outputs.append(
                StoredOutput(
                    asset.id,
                    project.blobs.path(sha256),
                    sha256,
                    image.width,
                    image.height,
                    image.seed,
                    result.provider,
                    result.model,
                    share,
                    asset.nsfw_score,
                )
            )
    return outputs
