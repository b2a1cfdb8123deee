"""The pipeline's stages as job kinds (registered by pipeline/kinds.py): curation, dataset versions,
generation, the wizard, sheet, enrichment, studio, training and evaluation — and the typed payload of each.

Each kind takes `{"character": NAME, ...settings}`, checks the settings against a frozen model (a bad
value is an InvalidInput naming the field), runs the stage with the job's context (progress, cancellation)
and returns the stage's result as JSON: asset ids, costs, and the stage's own notes (e.g. that the tiny
model draws no faces, so identity is not measurable). Stored images are reused where the stage allows it.

The payload models are registered with their kinds (pipeline/kinds.py); the API and `flenwheel jobs
submit` validate a payload with the same model before it is queued, and the worker again when it runs.
Every field is bounded. A field that names a file is a `FileRef`: over the API it may only be an https
URL, the built-in `tiny` model or `checkpoint:ID` of one of the caller's checkpoints (web/routes/jobs.py
checks it); the CLI, run by whoever owns the machine, may also give local paths.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, Field

from flenwheel.domain import Frozen
from flenwheel.errors import InvalidInput
from flenwheel.jobs.base import JobCancelled, JobContext
from flenwheel.jobs.kinds import parse
from flenwheel.pipeline.flywheel import FlywheelOptions
from flenwheel.pipeline.stage import RenderSize
from flenwheel.store.project import Project


class FileMarker:
    """Marks a payload field that names a file or a model (see `FileRef`)."""

    def __repr__(self) -> str:
        return "FileRef"


FILE = FileMarker()
FileRef = Annotated[
    str,
    Field(
        min_length=1,
        max_length=2000,
        description="an https URL, the built-in model `tiny`, or `checkpoint:ID` of one of your checkpoints "
        "(the CLI also takes local paths)",
    ),
    FILE,
]
CHECKPOINT_PREFIX = "checkpoint:"
BUILT_IN_MODELS = frozenset({"tiny"})
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")]


class JobSize(Frozen):
    """A stage's image size and steps as a job may ask for it (bounded: a worker must not be told 100k px)."""

    width: int = Field(default=512, ge=64, le=2048, multiple_of=8)
    height: int = Field(default=512, ge=64, le=2048, multiple_of=8)
    steps: int = Field(default=20, ge=1, le=150)
    guidance: float = Field(default=7.0, ge=0.0, le=30.0)

    def render(self) -> RenderSize:
        return RenderSize(**self.model_dump())


class _Character(Frozen):
    """Every payload names its character; over the API it is filled in from `character_id`."""

    character: str = Field(min_length=1, max_length=64)


class _Payload(_Character):
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
    tweak: str = Field(default="", max_length=300)  # added to the position's prompt ("hands in pockets")


class SheetPayload(_Payload):
    pick_auto: bool = True


class RedrawVariationPayload(_Payload):
    variation: str = Field(min_length=1, max_length=64)  # a variation id of the character's sheet


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
    provider: Name | None = None  # an engine by id (`flenwheel providers`); None: the router picks


class StudioEditPayload(_Character):
    """Edit one of the character's images: inpaint under `mask_png` (a PNG, base64, white = redraw; the web
    app paints it on a canvas) or, without a mask, image-to-image of the whole image at `strength`."""

    asset_id: int = Field(ge=1, le=2**31 - 1)
    prompt: str = Field(min_length=1, max_length=2000)
    mask_png: str | None = Field(default=None, max_length=8_000_000)  # base64 of a PNG (≤ 6 MB)
    # Default: 1.0 under a mask (studio_inpaint), 0.6 for image-to-image (studio_edit).
    strength: float | None = Field(default=None, gt=0.0, le=1.0)
    steps: int = Field(default=20, ge=1, le=150)
    seed: int | None = Field(default=None, ge=0, lt=2**31)


class StudioUpscalePayload(_Character):
    asset_id: int = Field(ge=1, le=2**31 - 1)
    factor: Literal[2, 4] = 2


class TrainingOptions(Frozen):
    """Overrides of the training spec (trainers/base.py TrainingSpec), bounded to what one server should be
    asked for; a field left out keeps the spec's default (the trigger always comes from the character)."""

    base_model: FileRef | None = None
    family: Literal["sd", "sdxl", "flux", "qwen-image", "qwen-image-edit", "z-image"] | None = None
    rank: int | None = Field(default=None, ge=1, le=128)
    alpha: float | None = Field(default=None, gt=0, le=1024)
    learning_rate: float | None = Field(default=None, gt=0, le=0.1)
    optimizer: Literal["adamw", "adamw8bit", "prodigy", "sgd"] | None = None
    epochs: int | None = Field(default=None, ge=1, le=100)
    max_steps: int | None = Field(default=None, ge=1, le=20_000)
    batch_size: int | None = Field(default=None, ge=1, le=16)
    resolution: int | None = Field(default=None, ge=64, le=1024, multiple_of=64)
    buckets: bool | None = None
    repeats: int | None = Field(default=None, ge=1, le=100)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    save_every_epochs: int | None = Field(default=None, ge=1, le=100)
    save_every_steps: int | None = Field(default=None, ge=1, le=20_000)
    ema: bool | None = None
    ema_decay: float | None = Field(default=None, gt=0.0, lt=1.0)
    train_text_encoder: bool | None = None

    def overrides(self) -> dict[str, Any]:
        """The fields given, as `train_character` keyword overrides."""
        return self.model_dump(exclude_none=True)


class EvaluationOptions(Frozen):
    """Settings of an evaluation grid (pipeline/evaluation.py evaluate_run); left out = its defaults."""

    strengths: tuple[Annotated[float, Field(ge=0.0, le=2.0)], ...] | None = Field(
        default=None, min_length=1, max_length=8
    )
    prompts: Literal["all", "quick"] | tuple[Annotated[str, Field(min_length=1, max_length=48)], ...] = Field(
        default="all", description="`all`, `quick`, or the keys of the model-card prompts to draw"
    )
    size: int | None = Field(default=None, ge=64, le=1024, multiple_of=8)
    steps: int | None = Field(default=None, ge=1, le=50)
    model: FileRef | None = None
    provider: Name | None = None

    def settings(self) -> dict[str, Any]:
        """The fields given, as `evaluate_run` keyword arguments."""
        return self.model_dump(exclude_none=True)


class TrainPayload(_Character):
    trainer: Name = "local"
    version: int | None = Field(default=None, ge=1, le=2**31 - 1)
    training: TrainingOptions = TrainingOptions()


class EvaluatePayload(_Character):
    run: int | None = Field(default=None, ge=1, le=2**31 - 1)
    strengths: tuple[Annotated[float, Field(ge=0.0, le=2.0)], ...] | None = Field(
        default=None, min_length=1, max_length=8
    )
    prompts: Literal["all", "quick"] | tuple[Annotated[str, Field(min_length=1, max_length=48)], ...] = "all"
    size: int | None = Field(default=None, ge=64, le=1024, multiple_of=8)
    steps: int | None = Field(default=None, ge=1, le=50)


ChainStage = Literal["sheet", "gate", "dataset", "train", "evaluate", "activate"]


class ChainOptions(Frozen):
    """What the background chain may be told: stages to skip, the trainer and its settings, the grid."""

    trainer: Name = "local"
    training: TrainingOptions = TrainingOptions()
    evaluation: EvaluationOptions = EvaluationOptions()
    skip: tuple[ChainStage, ...] = Field(default=(), max_length=6)


class ChainPayload(_Character):
    options: ChainOptions = ChainOptions()


class FlywheelPayload(_Character, FlywheelOptions):
    """`flenwheel flywheel NAME`: rounds of flywheel 1 (pipeline/flywheel.py); a retried job resumes its round
    and runs only the rounds it has left."""

    def options(self) -> FlywheelOptions:
        return FlywheelOptions(**self.model_dump(exclude={"character"}))


class ChainStagePayload(_Character):
    """A stage of the chain (internal: submitted only by the chain). `root` is the chain's root job; the
    stage checks it against its own row, never trusts it."""

    options: ChainOptions = ChainOptions()
    root: int | None = Field(default=None, ge=1, le=2**31 - 1)


class CuratePayload(_Character):
    identity_threshold: float | None = Field(default=None, gt=0.0, lt=2.0)  # strict: the character
    review_threshold: float | None = Field(default=None, gt=0.0, lt=2.0)  # loose: needs review up to here


class DatasetBuildPayload(_Character):
    pass


class LoraPayload(Frozen):
    path: FileRef
    strength: float = Field(default=1.0, ge=-4.0, le=4.0)


class GenerateRequest(Frozen):
    """A text-to-image request as a job may ask for it (bounded)."""

    kind: Literal["text_to_image"] = "text_to_image"
    prompt: str = Field(default="", max_length=2000)
    negative: str = Field(default="", max_length=2000)
    model: FileRef | None = None
    loras: tuple[LoraPayload, ...] = Field(default=(), max_length=4)
    seed: int | None = Field(default=None, ge=0, lt=2**31)
    count: int = Field(default=1, ge=1, le=10)
    nsfw: bool = False
    width: int = Field(default=512, ge=64, le=2048, multiple_of=8)
    height: int = Field(default=512, ge=64, le=2048, multiple_of=8)
    steps: int = Field(default=20, ge=1, le=150)
    guidance: float = Field(default=7.0, ge=0.0, le=30.0)
    # draft / hq: an engine that knows the model family takes that family's own steps and guidance for it
    tier: Literal["draft", "hq"] | None = None


class GeneratePayload(_Character):
    request: GenerateRequest = GenerateRequest()
    preferred: Name | None = None


def _names_a_file(annotation: Any) -> bool:
    """Whether a field's annotation is (or may be) a `FileRef`."""
    if get_origin(annotation) is Annotated:
        return any(isinstance(extra, FileMarker) for extra in get_args(annotation)[1:]) or _names_a_file(
            get_args(annotation)[0]
        )
    return any(_names_a_file(argument) for argument in get_args(annotation))


def file_refs(
    model: BaseModel, loc: tuple[str | int, ...] = ()
) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """Every `FileRef` value in a payload, at any depth, with where it is (`("training", "base_model")`)."""
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, str) and (
            any(isinstance(extra, FileMarker) for extra in field.metadata) or _names_a_file(field.annotation)
        ):
            yield (*loc, name), value
        elif isinstance(value, BaseModel):
            yield from file_refs(value, (*loc, name))
        elif isinstance(value, tuple | list):
            for index, item in enumerate(value):
                if isinstance(item, BaseModel):
                    yield from file_refs(item, (*loc, name, index))


def resolve_file(project: Project, ref: str) -> str:
    """A `FileRef` as the engine or trainer takes it: `checkpoint:ID` becomes that checkpoint's file."""
    if not ref.startswith(CHECKPOINT_PREFIX):
        return ref
    from flenwheel.store.models import Checkpoint

    number = ref.removeprefix(CHECKPOINT_PREFIX)
    with project.db.session() as session:
        checkpoint = session.get(Checkpoint, int(number)) if number.isdigit() else None
        if checkpoint is None:
            raise InvalidInput(
                f"{ref!r} names no checkpoint: list a run's checkpoints with `flenwheel train`"
            )
        return str(project.root / checkpoint.path)


def _json(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")


def curate_job(project: Project, payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """`flenwheel curate` as a job: analyse new assets (progress per asset) and label every asset."""
    from flenwheel.datasets.curate import curate
    from flenwheel.domain import ReviewLabel

    p = parse(CuratePayload, payload, "curate")

    def on_progress(done: int, total: int) -> None:
        ctx.progress(done, total, f"analysed {done} of {total}")
        if ctx.cancelled():
            raise JobCancelled("curation cancelled; analyses stored so far are kept")

    report = curate(
        project,
        p.character,
        on_progress=on_progress,
        identity_threshold=p.identity_threshold,
        review_threshold=p.review_threshold,
    )
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
    image = regenerate_position(project, p.character, p.position, ctx, p.mode, p.render, tweak=p.tweak)
    return {**_json(image), "asset_id": image.image.asset_id}


def sheet_job(project: Project, payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """The character sheet (anchors, then variations); stored anchors are reused on a rerun."""
    from flenwheel.pipeline.sheet import run_sheet

    p = parse(SheetPayload, payload, "sheet")
    return _json(run_sheet(project, p.character, ctx, pick_auto=p.pick_auto, size=p.render))


def redraw_variation_job(project: Project, payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """One sheet variation drawn again from its picked anchor (new seeds, the same identity gate)."""
    from flenwheel.pipeline.sheet import redraw_variation

    p = parse(RedrawVariationPayload, payload, "redraw_variation")
    outcome = redraw_variation(project, p.character, p.variation, ctx, size=p.render)
    return {**_json(outcome), "asset_id": outcome.image.asset_id if outcome.image else None}


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
        provider=p.provider,
        size=p.render,
        ctx=ctx,
    )
    return {**_json(result), "asset_ids": [o.asset_id for o in result.outputs]}


def _own_image(project: Project, character: str, asset_id: int) -> bytes:
    """The stored bytes of one of this character's images (InvalidInput names it when it is not one)."""
    from flenwheel.datasets.review import find_asset
    from flenwheel.store.project import get_character

    with project.db.session() as session:
        found = get_character(session, character)
        asset = find_asset(session, found.id, character, str(asset_id))
        sha256 = asset.sha256
    return project.blobs.get(sha256)


def _mask_bytes(encoded: str) -> bytes:
    import base64
    import binascii

    data = encoded.split(",", 1)[1] if encoded.startswith("data:") else encoded
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(
            "mask_png is not base64: send the mask as a base64 PNG (white = redraw, black = keep)"
        ) from None


def studio_edit_job(project: Project, payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Inpaint under a painted mask, or image-to-image at a strength, of one of the character's images."""
    from flenwheel.pipeline.studio import studio_edit, studio_inpaint

    p = parse(StudioEditPayload, payload, "studio_edit")
    image = _own_image(project, p.character, p.asset_id)
    common: dict[str, Any] = {"seed": p.seed, "steps": p.steps, "parents": (p.asset_id,), "ctx": ctx}
    if p.mask_png:
        mask = _mask_bytes(p.mask_png)
        result = studio_inpaint(
            project, p.character, image, mask, p.prompt, strength=p.strength or 1.0, **common
        )
    else:
        result = studio_edit(project, p.character, image, p.prompt, strength=p.strength or 0.6, **common)
    return {**_json(result), "asset_ids": [o.asset_id for o in result.outputs]}


def studio_upscale_job(project: Project, payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Upscale one of the character's images 2× or 4×."""
    from flenwheel.pipeline.studio import studio_upscale

    p = parse(StudioUpscalePayload, payload, "studio_upscale")
    image = _own_image(project, p.character, p.asset_id)
    result = studio_upscale(project, p.character, image, p.factor, parents=(p.asset_id,), ctx=ctx)
    return {**_json(result), "asset_ids": [o.asset_id for o in result.outputs]}


def train_job(project: Project, payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Train a LoRA on a dataset version; a retry resumes the run, a finished one is reused."""
    from flenwheel.pipeline.training import train_character
    from flenwheel.trainers.registry import TrainerRegistry

    p = parse(TrainPayload, payload, "train")
    trainer = TrainerRegistry.from_settings(project.settings).get(p.trainer)
    overrides = p.training.overrides()
    if "base_model" in overrides:
        overrides["base_model"] = resolve_file(project, overrides["base_model"])
    outcome = train_character(
        project, p.character, trainer, p.version, ctx=ctx, reuse_finished=True, **overrides
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


def flywheel_job(project: Project, payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Rounds of flywheel 1 until the stopping rule (pipeline/flywheel.py); each round is its own record."""
    from flenwheel.pipeline.flywheel import run_flywheel

    p = parse(FlywheelPayload, payload, "flywheel")
    outcome = run_flywheel(project, p.character, p.options(), ctx=ctx)
    return {
        "rounds": [
            {
                "round": r.number,
                "status": r.status,
                "candidates": len(r.record.get("candidates", [])),
                "kept": (r.record.get("filter") or {}).get("kept"),
                "pristine": len((r.record.get("review") or {}).get("pristine", [])),
                "dataset": ((r.record.get("dataset") or {}).get("version") or {}).get("label"),
                "verdict": (r.record.get("comparison") or {}).get("verdict"),
            }
            for r in outcome.rounds
        ],
        "stopped_because": outcome.stopped_because,
        "report": outcome.report,
    }
