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
from flenwheel.store.models import Asset, RunCall
from flenwheel.store.project import Project, get_character
from flenwheel.store.run import RunContext


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
    ctx: RunContext | None = None,
    attributes: dict[str, Any] | None = None,
) -> GenerationOutcome:
    """Route one request within the character's budget and NSFW policy, and store what comes back.

    `ctx`: the run (a job's, or a fresh one for a direct call). The outputs, their stage `attributes`, the
    job id and the call's settlement are written in ONE transaction, so a crash leaves either all of them or
    none (and then the call's remote id, kept before waiting, lets the retry resume instead of paying twice).
    Raises NoProvider, BudgetExceeded, CallStillBilling, RunCancelled or the engine's permanent error."""
    with project.db.session() as session:
        character = get_character(session, character_name)
        character_id, character_nsfw = character.id, character.nsfw
    if ctx is None:
        ctx = RunContext(project.db, character_id=character_id, on_progress=_two_args(on_progress))
    ctx = ctx.for_character(character_id, project.db)
    if request.seed is None and not isinstance(request, Upscale):
        import random

        request = request.model_copy(update={"seed": random.SystemRandom().randrange(2**32)})
    nsfw = is_nsfw(request, character_nsfw)
    fingerprint = request_fingerprint(request)
    reused = _finished_call(project, character_id, fingerprint, ctx, attributes or {}, nsfw)
    if reused is not None:
        return reused
    router = Router(providers if providers is not None else ProviderRegistry.shared(project.settings).all())
    routed = router.run(request, ctx, nsfw, key=fingerprint, preferred=preferred)
    result = routed.result
    outputs = _store_outputs(
        project, character_id, request, result, kind, parents, routed.call, attributes or {}
    )
    note = TINY_NOTE if result.model == TINY_MODEL_ID else None
    return GenerationOutcome(outputs, result.provider, result.model, result.cost_usd, nsfw, note)


def _finished_call(
    project: Project,
    character_id: int,
    fingerprint: str,
    ctx: RunContext,
    attributes: dict[str, Any],
    nsfw: bool,
) -> GenerationOutcome | None:
    """The outputs of this exact request (same fingerprint: prompt, seed, inputs…) when an earlier call of it
    finished and stored them — e.g. a worker killed after the outputs' commit — so a retry pays nothing."""
    with ctx.transaction() as session:
        call = session.scalar(
            select(RunCall)
            .where(
                RunCall.character_id == character_id,
                RunCall.status == "done",
                RunCall.key.like(f"%:{fingerprint}"),
            )
            .order_by(RunCall.id.desc())
            .limit(1)
        )
        if call is None or not call.outputs:
            return None
        assets = [session.get(Asset, asset_id) for asset_id in call.outputs]
        if any(asset is None for asset in assets):
            return None  # the user deleted an output since: draw again
        outputs = []
        for asset in assets:
            assert asset is not None
            if attributes:
                asset.attributes = {**(asset.attributes or {}), **attributes}
            if ctx.job_id is not None:
                asset.job_id = ctx.job_id
            outputs.append(
                StoredOutput(
                    asset.id,
                    project.blobs.path(asset.sha256),
                    asset.sha256,
                    asset.width,
                    asset.height,
                    asset.seed,
                    asset.provider or call.engine,
                    asset.model or "",
                    0.0,
                    asset.nsfw_score,
                )
            )
    model = outputs[0].model
    note = TINY_NOTE if model == TINY_MODEL_ID else None
    return GenerationOutcome(outputs, outputs[0].provider, model, 0.0, nsfw, note)


def _two_args(callback: Callable[[int, int], None] | None) -> Callable[[int, int, str], None] | None:
    if callback is None:
        return None
    return lambda done, total, _message: callback(done, total)


def _store_outputs(
    project: Project,
    character_id: int,
    request: GenerationRequest,
    result: GenerationResult,
    kind: AssetKind,
    parents: tuple[int, ...],
    call: RunContext,
    attributes: dict[str, Any],
) -> list[StoredOutput]:
    """Blobs first (content-addressed: an orphan after a crash costs nothing), then every asset row, its
    attributes and job id, and the call's settlement in one transaction."""
    from flenwheel.safety import classify_image

    share = round(result.cost_usd / len(result.images), 6)
    loras = [(lora.path, lora.strength) for lora in request.loras]
    prepared: list[tuple[Any, dict[str, Any], str]] = []
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
        prepared.append((image, record, project.blobs.put(png)))
    outputs: list[StoredOutput] = []
    with call.transaction() as session:
        for image, record, sha256 in prepared:
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
                    attributes=dict(attributes),
                    job_id=call.job_id,
                )
                session.add(asset)
            else:
                if attributes:
                    asset.attributes = {**(asset.attributes or {}), **attributes}
                if call.job_id is not None:
                    asset.job_id = call.job_id
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
        call.settle(result.cost_usd, session=session, outputs=[output.asset_id for output in outputs])
    return outputs
