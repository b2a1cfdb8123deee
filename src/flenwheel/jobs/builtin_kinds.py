"""Built-in job kinds: `noop` and `sleep` for tests and operations, and the existing pipeline stages
(`curate`, `dataset_build`, `generate`) wrapped as jobs. Each returns a JSON-able result dict; a
`cost_usd` key in it is recorded on the job row."""

from __future__ import annotations

import time
from typing import Any

from flenwheel.errors import FlenwheelError
from flenwheel.jobs.base import JobCancelled, JobContext, TransientJobError
from flenwheel.store.project import Project


def noop(project: Project, payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Does nothing and returns its payload: checks that workers are alive."""
    from flenwheel.pipeline.jobs import NoopPayload, parse

    parse(NoopPayload, payload, "noop")
    ctx.progress(1, 1, "done")
    return {"echo": payload}


def sleep(project: Project, payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """`steps` steps of `step_s` seconds with progress and cancellation; can fail on purpose:
    `fail` (message, permanent) or `transient_failures` (that many attempts fail transiently first)."""
    from flenwheel.pipeline.jobs import SleepPayload, parse

    p = parse(SleepPayload, payload, "sleep")
    steps, step_s = p.steps, p.step_s
    attempt = int(ctx.known_external_id("sleep_attempt") or 0) + 1
    ctx.remember_external_id("sleep_attempt", str(attempt))
    if attempt <= p.transient_failures:
        raise TransientJobError(f"attempt {attempt} failed on purpose (transient)")
    if p.fail:
        raise FlenwheelError(p.fail)
    ctx.progress(0, steps, "starting")
    for step in range(steps):
        if ctx.cancelled():
            raise JobCancelled(f"cancelled after {step} of {steps} steps")
        time.sleep(step_s)
        ctx.progress(step + 1, steps, f"step {step + 1} of {steps}")
    return {"steps": steps, "attempt": attempt}


def curate_job(project: Project, payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """`flenwheel curate` as a job: analyse new assets (progress per asset) and label every asset."""
    from flenwheel.datasets.curate import curate
    from flenwheel.domain import ReviewLabel
    from flenwheel.pipeline.jobs import CuratePayload, parse

    p = parse(CuratePayload, payload, "curate")

    def on_progress(done: int, total: int) -> None:
        ctx.progress(done, total, f"analysed {done} of {total}")
        if ctx.cancelled():
            raise JobCancelled("curation cancelled; analyses stored so far are kept")

    report = curate(project, p.character, on_progress=on_progress, identity_threshold=p.identity_threshold)
    return {
        "character": report.character,
        "identity_source": report.identity_source,
        "analysed_now": report.analysed_now,
        "assets": len(report.decisions),
        "labels": {label.value: report.count(label) for label in ReviewLabel},
    }


def dataset_build_job(project: Project, payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Snapshot the good images into a dataset version (an unchanged set returns the latest one)."""
    from flenwheel.datasets.versions import build_dataset_version
    from flenwheel.pipeline.jobs import DatasetBuildPayload, parse

    p = parse(DatasetBuildPayload, payload, "dataset_build")
    ctx.progress(0, 1, "building the dataset version")
    built = build_dataset_version(project, p.character)
    ctx.progress(1, 1, f"version {built.version.number}")
    return {
        "dataset_version_id": built.version.id,
        "number": built.version.number,
        "created": built.created,
        "items": len(built.version.items),
    }


def generate_job(project: Project, payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Text-to-image for a character: `{"character", "request": {TextToImage fields}, "preferred"}`.
    The seed is fixed on the first attempt and kept in the job's external ids, so a retry draws the same
    images (and the same assets) instead of new ones."""

    from flenwheel.pipeline.generation import run_generation
    from flenwheel.pipeline.jobs import GeneratePayload, parse, resolve_file
    from flenwheel.providers.base import LoraRef, TextToImage

    p = parse(GeneratePayload, payload, "generate")
    fields = p.request.model_dump(exclude={"kind", "loras", "model"})
    request = TextToImage(
        **fields,
        model=resolve_file(project, p.request.model) if p.request.model else None,
        loras=tuple(
            LoraRef(path=resolve_file(project, lora.path), strength=lora.strength) for lora in p.request.loras
        ),
    )
    if request.seed is None:
        known = ctx.known_external_id("seed")
        if known is None:
            import random

            # below 2**31: asset.seed is a 32-bit INTEGER column on PostgreSQL
            known = str(random.SystemRandom().randrange(2**31))
            ctx.remember_external_id("seed", known)
        request = request.model_copy(update={"seed": int(known)})

    # The job's own run context goes down to the engine: its cancel reaches the engine's remote cancel, and
    # the outputs are tagged with this job in the transaction that stores them.
    outcome = run_generation(project, p.character, request, preferred=p.preferred, ctx=ctx)
    asset_ids = [output.asset_id for output in outcome.outputs]
    return {
        "asset_ids": asset_ids,
        "sha256": [output.sha256 for output in outcome.outputs],
        "seed": request.seed,
        "provider": outcome.provider,
        "model": outcome.model,
        "cost_usd": outcome.cost_usd,
        "note": outcome.note,
    }
