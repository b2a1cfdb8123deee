"""The wizard, sheet, enrichment, studio, training and evaluation stages as job kinds (jobs/kinds.py).

Each kind takes `{"character": NAME, ...settings}`, checks the settings against a frozen model (a bad
value is an InvalidInput naming the field), runs the stage with the job's context (progress, cancellation)
and returns the stage's result as JSON: asset ids, costs, and the stage's own notes (e.g. that the tiny
model draws no faces, so identity is not measurable). Stored images are reused where the stage allows it.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError

from flenwheel.domain import Frozen
from flenwheel.errors import InvalidInput
from flenwheel.jobs.base import JobContext
from flenwheel.pipeline.stage import RenderSize
from flenwheel.store.project import Project

M = TypeVar("M", bound=BaseModel)


class JobSize(Frozen):
    """A stage's image size and steps as a job may ask for it (bounded: a worker must not be told 100k px)."""

    width: int = Field(default=512, ge=64, le=2048, multiple_of=8)
    height: int = Field(default=512, ge=64, le=2048, multiple_of=8)
    steps: int = Field(default=20, ge=1, le=150)
    guidance: float = Field(default=7.0, ge=0.0, le=30.0)

    def render(self) -> RenderSize:
        return RenderSize(**self.model_dump())


class _Payload(Frozen):
    character: str = Field(min_length=1, max_length=200)
    size: JobSize | None = None  # tests and benches draw 64 px on the tiny model

    @property
    def render(self) -> RenderSize | None:
        return self.size.render() if self.size is not None else None


class BaseImagesPayload(_Payload):
    count: int = Field(default=3, ge=1, le=10)
    max_retries: int = Field(default=2, ge=0, le=5)


class PickBasePayload(_Payload):
    asset_id: int = Field(ge=1)


class SkinPassPayload(_Payload):
    strength: float = Field(default=0.3, ge=0.05, le=0.95)


class ProfileSetPayload(_Payload):
    mode: Literal["fast", "consistent"] = "fast"


class RegeneratePayload(_Payload):
    position: str = Field(min_length=1, max_length=64)
    mode: Literal["fast", "consistent"] = "fast"


class SheetPayload(_Payload):
    pick_auto: bool = True


class EnrichPayload(_Payload):
    per_source: int = Field(default=4, ge=1, le=20)
    templates: tuple[str, ...] | None = None
    sources: tuple[int, ...] | None = None
    identity_retries: int = Field(default=1, ge=0, le=5)


class StudioPayload(_Payload):
    prompt: str = Field(min_length=1, max_length=2000)
    aspect: str = "1:1"
    tier: Literal["draft", "hq"] = "draft"
    count: int = Field(default=1, ge=1, le=10)
    nsfw: bool = False
    mode: Literal["auto", "text", "identity_reference", "lora"] = "auto"
    seed: int | None = Field(default=None, ge=0, lt=2**31)
    negative: str = Field(default="", max_length=2000)


class TrainPayload(Frozen):
    character: str = Field(min_length=1, max_length=200)
    trainer: str = "local"
    version: int | None = Field(default=None, ge=1)
    training: dict[str, Any] = {}  # TrainingSpec overrides; checked by pipeline.training


class EvaluatePayload(Frozen):
    character: str = Field(min_length=1, max_length=200)
    run: int | None = Field(default=None, ge=1)
    strengths: tuple[float, ...] | None = None
    prompts: str | tuple[str, ...] = "all"
    size: int | None = Field(default=None, ge=64, le=2048)
    steps: int | None = Field(default=None, ge=1, le=150)


def parse(model: type[M], payload: dict[str, Any], kind: str) -> M:
    """The payload as `model`, or an InvalidInput saying which field is wrong and why."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'payload'}: {error['msg']}" for error in exc.errors()
        )
        raise InvalidInput(f"{kind} job payload is not valid: {problems}") from None


def _json(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")


def base_images_job(project: Project, payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """N distinct base images from the spec, in parallel; progress per image as it lands."""
    from flenwheel.pipeline.wizard import generate_base_images

    p = parse(BaseImagesPayload, payload, "base_images")
    result = generate_base_images(project, p.character, ctx, p.count, p.render, max_retries=p.max_retries)
    return {**_json(result), "asset_ids": [c.image.asset_id for c in result.candidates]}


def pick_base_job(project: Project, payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Mark one base image as the pick (also a plain API call: POST /characters/{id}/pick-base)."""
    from flenwheel.pipeline.wizard import pick_base

    p = parse(PickBasePayload, payload, "pick_base")
    return {"picked": _json(pick_base(project, p.character, p.asset_id))}


def skin_pass_job(project: Project, payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """The skin pass of the picked base; an existing pass of the same base is reused, not paid again."""
    from flenwheel.pipeline.stage import picked_base, stage_assets
    from flenwheel.pipeline.wizard import skin_pass

    p = parse(SkinPassPayload, payload, "skin_pass")
    base = picked_base(project, p.character)
    if base is not None and base.attributes.get("skin_pass"):
        ctx.progress(1, 1, "the picked base already had its skin pass")
        return {"reused": True, "picked_asset_id": base.id, "message": "the pick is already skin-passed"}
    if base is not None and ctx.job_id is not None:
        earlier = [
            a for a in stage_assets(project, p.character, "base", skin_pass=True) if a.job_id == ctx.job_id
        ]
        if earlier:  # this job drew it before a crash: finish the pick without drawing again
            from flenwheel.pipeline.wizard import pick_base

            pick_base(project, p.character, earlier[-1].id)
            ctx.progress(1, 1, "skin pass reused")
            return {"reused": True, "picked_asset_id": earlier[-1].id, "message": "skin pass reused"}
    result = skin_pass(project, p.character, ctx, p.render, strength=p.strength)
    return {**_json(result), "reused": False}


def profile_set_job(project: Project, payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """The profile picture set, fast or consistent; progress per image as each lands."""
    from flenwheel.pipeline.wizard import generate_profile_set

    p = parse(ProfileSetPayload, payload, "profile_set")
    result = generate_profile_set(project, p.character, ctx, p.mode, p.render)
    return {**_json(result), "asset_ids": [i.image.asset_id for i in result.images]}


def regenerate_position_job(project: Project, payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """One profile position drawn again with a new seed; it replaces the old image in the set."""
    from flenwheel.pipeline.wizard import regenerate_position

    p = parse(RegeneratePayload, payload, "regenerate_position")
    image = regenerate_position(project, p.character, p.position, ctx, p.mode, p.render)
    return {**_json(image), "asset_id": image.image.asset_id}


def sheet_job(project: Project, payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """The character sheet (anchors, then variations); stored anchors are reused on a rerun."""
    from flenwheel.pipeline.sheet import run_sheet

    p = parse(SheetPayload, payload, "sheet")
    return _json(run_sheet(project, p.character, ctx, pick_auto=p.pick_auto, size=p.render))


def enrich_job(project: Project, payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Background, lighting, style and camera edits of the good images, each linked to its source."""
    from flenwheel.pipeline.enrich import enrich

    p = parse(EnrichPayload, payload, "enrich")
    result = enrich(
        project,
        p.character,
        ctx,
        per_source=p.per_source,
        template_ids=p.templates,
        source_ids=p.sources,
        size=p.render,
        identity_retries=p.identity_retries,
    )
    return _json(result)


def studio_generate_job(project: Project, payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Studio images in the mode the character's state allows (auto: LoRA once one is active). The seed is
    fixed on the first attempt, so a retry draws the same images."""
    from flenwheel.pipeline.studio import studio_generate

    p = parse(StudioPayload, payload, "studio_generate")
    seed = p.seed
    if seed is None:
        known = ctx.known_external_id("seed")
        if known is None:
            import random

            known = str(random.SystemRandom().randrange(2**31 - 16))
            ctx.remember_external_id("seed", known)
        seed = int(known)
    result = studio_generate(
        project,
        p.character,
        p.prompt,
        aspect=p.aspect,
        tier=p.tier,
        count=p.count,
        nsfw=p.nsfw,
        mode=p.mode,
        seed=seed,
        negative=p.negative,
        size=p.render,
        ctx=ctx,
    )
    return {**_json(result), "asset_ids": [o.asset_id for o in result.outputs]}


def train_job(project: Project, payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Train a LoRA on a dataset version; a retry resumes the run, a finished one is reused."""
    from flenwheel.pipeline.training import train_character
    from flenwheel.trainers.registry import TrainerRegistry

    p = parse(TrainPayload, payload, "train")
    trainer = TrainerRegistry.from_settings(project.settings).get(p.trainer)
    outcome = train_character(
        project, p.character, trainer, p.version, ctx=ctx, reuse_finished=True, **p.training
    )
    return {
        "run": outcome.run_id,
        "steps": outcome.steps,
        "checkpoints": len(outcome.checkpoints),
        "final_loss": outcome.final_loss,
        "resumed": outcome.resumed,
        "cost_usd": outcome.cost_usd,
    }


def evaluate_job(project: Project, payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Evaluate a run and activate its best checkpoint; only missing grid cells are drawn on a retry."""
    from flenwheel.pipeline.evaluation import evaluate_run

    p = parse(EvaluatePayload, payload, "evaluate")
    settings: dict[str, Any] = {"prompts": p.prompts, "size": p.size, "steps": p.steps}
    if p.strengths is not None:
        settings["strengths"] = p.strengths
    outcome = evaluate_run(project, p.character, p.run, ctx=ctx, **settings)
    return _json(outcome)
