"""Dataset enrichment (seed 001 step 1.2): edit templates — background, lighting, style, camera angle —
applied to good images, each output linked to its source and checked by the identity gate like the sheet.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Literal

from pydantic import Field
from sqlalchemy import select

from flenwheel.domain import AssetKind, Frozen, ReviewLabel
from flenwheel.errors import InvalidInput
from flenwheel.jobs.base import JobContext
from flenwheel.pipeline.spec import NEGATIVE, CharacterSpec, character_spec
from flenwheel.pipeline.stage import (
    NOT_MEASURABLE,
    FaceProbe,
    IdentityCheck,
    RenderSize,
    StageEngines,
    StageImage,
    StageProgress,
    derive_seed,
    gated_edit,
    request_size,
    run_parallel,
    stage_assets,
)
from flenwheel.providers.base import GenerationRequest, ImageProvider, ImageToImage, LoraRef
from flenwheel.store.models import Asset
from flenwheel.store.project import Project, get_character

Group = Literal["background", "lighting", "style", "camera"]
GROUPS: tuple[Group, ...] = ("background", "lighting", "style", "camera")


class EnrichmentTemplate(Frozen):
    id: str
    group: Group
    prompt: str  # seed 001's edit instruction
    strength: float = Field(ge=0.05, le=0.95)


def _templates() -> tuple[EnrichmentTemplate, ...]:
    made = []
    for place in ("forest", "studio", "beach", "urban"):
        made.append(
            EnrichmentTemplate(
                id=f"background_{place}",
                group="background",
                prompt=f"change background to {place}, keep person identical",
                strength=0.55,
            )
        )
    for light in ("daylight", "sunset", "nighttime", "studio"):
        made.append(
            EnrichmentTemplate(
                id=f"lighting_{light}",
                group="lighting",
                prompt=f"change lighting to {light}, keep person identical",
                strength=0.45,
            )
        )
    for style in ("oil painting", "watercolor", "sketch"):
        made.append(
            EnrichmentTemplate(
                id=f"style_{style.replace(' ', '_')}",
                group="style",
                prompt=f"keep the person identical, but make it look like {style}",
                strength=0.6,
            )
        )
    for angle in ("slightly left", "slightly right", "lower", "higher"):
        made.append(
            EnrichmentTemplate(
                id=f"camera_{angle.replace(' ', '_')}",
                group="camera",
                prompt=f"change camera angle to {angle}, maintain appearance",
                strength=0.5,
            )
        )
    return tuple(made)


ENRICHMENT_TEMPLATES = _templates()


def template(template_id: str) -> EnrichmentTemplate:
    for item in ENRICHMENT_TEMPLATES:
        if item.id == template_id:
            return item
    known = ", ".join(t.id for t in ENRICHMENT_TEMPLATES)
    raise InvalidInput(f"no enrichment template {template_id!r} (templates: {known})")


def templates_for(source_index: int, per_source: int) -> list[EnrichmentTemplate]:
    """`per_source` templates, one group after another, rotating within a group from source to source."""
    chosen = []
    for slot in range(per_source):
        group = GROUPS[slot % len(GROUPS)]
        members = [t for t in ENRICHMENT_TEMPLATES if t.group == group]
        chosen.append(members[(source_index + slot // len(GROUPS)) % len(members)])
    return chosen


def enrichment_sources(project: Project, character_name: str) -> tuple[list[Asset], str]:
    """The good images: labelled good by review; when none is labelled yet, the sheet's picked anchors and
    the variations that did not drift. The second value says which rule chose them."""
    from sqlalchemy import select
    from sqlalchemy.orm import selectinload

    from flenwheel.datasets.curate import current_review

    with project.db.session() as session:
        character = get_character(session, character_name)
        rows = session.scalars(
            select(Asset)
            .where(Asset.character_id == character.id)
            .options(selectinload(Asset.reviews))
            .order_by(Asset.id)
        ).all()
        reviewed = [
            a
            for a in rows
            if a.kind != AssetKind.ENRICHED and (r := current_review(a)) and r.label == ReviewLabel.GOOD
        ]
    if reviewed:
        return reviewed, "images labelled good"
    sheet = [
        *stage_assets(project, character_name, "anchor", picked=True),
        *(
            a
            for a in stage_assets(project, character_name, "variation")
            if a.attributes.get("identity") != "drifted" and not a.attributes.get("rejected")
        ),
    ]
    return (
        sheet,
        "no image is labelled good yet: the sheet's picked anchors and variations that did not drift",
    )


class EnrichedOutcome(Frozen):
    source_asset_id: int
    template: str
    status: Literal["passed", "drifted", "not measurable"]
    attempts: int
    image: StageImage
    identity: IdentityCheck


class EnrichResult(Frozen):
    sources: tuple[int, ...]
    source_rule: str
    outcomes: tuple[EnrichedOutcome, ...]
    passed: int
    drifted: int
    not_measurable: int
    cost_usd: float
    note: str | None


def enrich(
    project: Project,
    character_name: str,
    ctx: JobContext,
    per_source: int = 4,
    template_ids: Sequence[str] | None = None,
    source_ids: Sequence[int] | None = None,
    size: RenderSize | None = None,
    providers: Sequence[ImageProvider] | None = None,
    identity_retries: int = 1,
    editor: EditorLora | None = None,
) -> EnrichResult:
    """Edit every good image with `per_source` templates (or the named ones); each output is an `enriched`
    asset whose parent is its source, its face checked against the source's.

    `editor` (flywheel 2, seed 001 step 2.3): every edit runs on the editor's model family with its LoRA, and
    the outputs are kept apart from the plain ones (attribute `editor` = its run id), so both can be compared
    on the same sources, templates and seeds."""
    if not 1 <= per_source <= len(ENRICHMENT_TEMPLATES):
        raise InvalidInput(f"per_source {per_source}: give 1 to {len(ENRICHMENT_TEMPLATES)}")
    chosen_templates = [template(t) for t in template_ids] if template_ids else None
    if source_ids:
        sources = enrichment_sources_by_id(project, character_name, source_ids)
        rule = "the images asked for"
    else:
        sources, rule = enrichment_sources(project, character_name)
    if not sources:
        raise InvalidInput(
            f"{character_name!r} has no good images to enrich: label some with `flenwheel review` or run "
            f"`flenwheel sheet {character_name} --pick-auto` first"
        )
    size = size or RenderSize()
    spec = character_spec(project, character_name)
    engines = StageEngines.for_project(project, providers)
    probe = FaceProbe(project)
    jobs = [
        (source, item)
        for index, source in enumerate(sources)
        for item in (chosen_templates or templates_for(index, per_source))
    ]
    progress = StageProgress(ctx, len(jobs), "enrichment")

    def draw(source: Asset, item: EnrichmentTemplate) -> EnrichedOutcome:
        edit = gated_edit(
            project,
            character_name,
            ctx,
            engines,
            probe,
            progress,
            partial(_request, spec, item, project.blobs.get(source.sha256), source, size, editor),
            AssetKind.ENRICHED,
            {
                "stage": "enriched",
                "template": item.id,
                "group": item.group,
                "source": source.id,
                "editor": editor.run_id if editor else None,
            },
            source.id,
            probe.embedding(source.id),
            identity_retries,
        )
        return EnrichedOutcome(
            source_asset_id=source.id,
            template=item.id,
            status=edit.status,
            attempts=edit.attempts,
            image=edit.image,
            identity=edit.identity,
        )

    outcomes = sorted(
        run_parallel([partial(draw, s, t) for s, t in jobs], engines.workers),
        key=lambda o: (o.source_asset_id, o.template),
    )
    return EnrichResult(
        sources=tuple(a.id for a in sources),
        source_rule=rule,
        outcomes=tuple(outcomes),
        passed=sum(o.status == "passed" for o in outcomes),
        drifted=sum(o.status == "drifted" for o in outcomes),
        not_measurable=sum(o.status == NOT_MEASURABLE for o in outcomes),
        cost_usd=round(sum(o.image.cost_usd for o in outcomes), 6),
        note=next((o.image.note for o in outcomes if o.image.note), None),
    )


def enrichment_sources_by_id(project: Project, character_name: str, ids: Sequence[int]) -> list[Asset]:
    with project.db.session() as session:
        character = get_character(session, character_name)
        found = []
        for asset_id in ids:
            asset = session.get(Asset, asset_id)
            if asset is None or asset.character_id != character.id:
                raise InvalidInput(f"asset {asset_id} is not an image of {character_name!r}")
            found.append(asset)
        return found


def _request(
    spec: CharacterSpec,
    item: EnrichmentTemplate,
    source_bytes: bytes,
    source: Asset,
    size: RenderSize,
    editor: EditorLora | None,
    attempt: int,
) -> GenerationRequest:
    return ImageToImage(
        prompt=f"{item.prompt}; {spec.subject()}",
        negative=NEGATIVE,
        image=source_bytes,
        strength=item.strength,
        seed=derive_seed(spec.fingerprint(), "enriched", source.sha256, item.id, attempt),
        model=editor.model if editor else None,
        loras=(editor.lora,) if editor else (),
        **request_size(source, size, item.strength),
    )


class EditorLora(Frozen):
    """An editor LoRA to edit with: its training run, the LoRA (its newest checkpoint at a strength) and the
    model family it runs on (what the router and the engines pick an endpoint or a workflow by)."""

    run_id: int
    lora: LoraRef
    model: str


# A training architecture → the model family the engines know it by (families.py).
_EDITOR_MODELS = {"qwen-image-edit": "qwen-image-edit-2509"}


def editor_lora(
    project: Project, character_name: str, run_id: int | None = None, strength: float = 1.0
) -> EditorLora:
    """The character's editor LoRA of run `run_id` (default: the newest editor run), at its newest checkpoint.
    Raises InvalidInput when the run is not a finished editor run with a checkpoint."""
    from flenwheel.pipeline.training import latest_run
    from flenwheel.store.models import Checkpoint

    run = latest_run(project, character_name, run_id, editor=True)
    if run.correction_set_id is None:
        raise InvalidInput(f"run {run.id} trained a character LoRA, not an editor: give an editor run's id")
    with project.db.session() as session:
        newest = session.scalars(
            select(Checkpoint).where(Checkpoint.run_id == run.id).order_by(Checkpoint.step.desc()).limit(1)
        ).first()
    if newest is None:
        raise InvalidInput(
            f"editor run {run.id} has no checkpoint yet ({run.status}): finish it with "
            f"`flenwheel corrections train {character_name}`"
        )
    family = str(run.spec.get("family", "qwen-image-edit"))
    return EditorLora(
        run_id=run.id,
        lora=LoraRef(path=str(project.root / newest.path), strength=strength),
        model=_EDITOR_MODELS.get(family, family),
    )
