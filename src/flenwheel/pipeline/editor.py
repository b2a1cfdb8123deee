"""Does the editor LoRA help? (flywheel 2, seed 001 step 2.3: "fewer needs_correction images, better character
consistency than the base model").

`compare_editor` enriches the same sources with the same templates and seeds twice — on the plain editor and with
the editor LoRA — and compares how often the identity gate finds the character drifted (what a person would label
`needs_correction`), pair by pair:

- each arm's drift rate among the edits it could measure, with a 95 % Wilson score interval
  (evaluation/comparison.py `wilson_interval`);
- better or worse from the paired outcomes with the exact McNemar test (`mcnemar_exact_p`, p < 0.05);
- an edit whose face could not be measured (the tiny model draws none; a protocol server's image has none) is
  counted apart: with no measured pair the verdict is "not measurable", never an improvement.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from flenwheel.domain import Frozen
from flenwheel.evaluation.comparison import ALPHA, mcnemar_exact_p, wilson_interval
from flenwheel.jobs.base import JobContext
from flenwheel.pipeline.enrich import EditorLora, EnrichedOutcome, enrich
from flenwheel.pipeline.stage import NOT_MEASURABLE, RenderSize
from flenwheel.providers.base import ImageProvider
from flenwheel.store.project import Project

EditorVerdict = Literal["better", "worse", "not distinguishable", "not measurable"]


class EditorArm(Frozen):
    label: str  # "base editor" / "editor LoRA (run 7)"
    edits: int
    measured: int
    drifted: int  # the identity gate's drift: what review would label needs_correction
    drift_rate: float | None  # drifted / measured; None when nothing was measured
    interval: tuple[float, float] | None  # 95 % Wilson interval of the drift rate
    cost_usd: float


class EditorComparison(Frozen):
    without: EditorArm
    with_editor: EditorArm
    pairs: int  # (source, template) pairs measured on both arms
    discordant: tuple[int, int]  # (drifted only with the LoRA, drifted only without it)
    p_value: float | None
    verdict: EditorVerdict
    summary: str


def _arm(label: str, outcomes: Sequence[EnrichedOutcome], cost: float) -> EditorArm:
    measured = [o for o in outcomes if o.status != NOT_MEASURABLE]
    drifted = sum(o.status == "drifted" for o in measured)
    rate = round(drifted / len(measured), 4) if measured else None
    interval = None
    if measured:
        low, high = wilson_interval(drifted, len(measured))
        interval = (round(low, 4), round(high, 4))
    return EditorArm(
        label=label,
        edits=len(outcomes),
        measured=len(measured),
        drifted=drifted,
        drift_rate=rate,
        interval=interval,
        cost_usd=cost,
    )


def compare_editor(
    project: Project,
    character_name: str,
    ctx: JobContext,
    editor: EditorLora,
    per_source: int = 2,
    source_ids: Sequence[int] | None = None,
    size: RenderSize | None = None,
    providers: Sequence[ImageProvider] | None = None,
) -> EditorComparison:
    """Enrich the same sources and templates without and with `editor` (no identity retries, so each pair is
    one edit per arm) and compare the drift rates. Costs are reserved against the character's budget like any
    enrichment; images already drawn by an earlier comparison are reused, not paid for again."""
    plain, tuned = (
        enrich(
            project,
            character_name,
            ctx,
            per_source=per_source,
            source_ids=source_ids,
            size=size,
            providers=providers,
            identity_retries=0,
            editor=arm,
        )
        for arm in (None, editor)
    )
    without = _arm("base editor", plain.outcomes, plain.cost_usd)
    with_editor = _arm(f"editor LoRA (run {editor.run_id})", tuned.outcomes, tuned.cost_usd)
    before = {(o.source_asset_id, o.template): o.status for o in plain.outcomes}
    after = {(o.source_asset_id, o.template): o.status for o in tuned.outcomes}
    paired = [
        (before[key], after[key])
        for key in before
        if key in after and NOT_MEASURABLE not in (before[key], after[key])
    ]
    only_with = sum(a == "drifted" and b != "drifted" for b, a in paired)
    only_without = sum(b == "drifted" and a != "drifted" for b, a in paired)
    if not paired:
        return EditorComparison(
            without=without,
            with_editor=with_editor,
            pairs=0,
            discordant=(only_with, only_without),
            p_value=None,
            verdict="not measurable",
            summary=(
                f"not measurable: no edit had a face to check on both arms ({without.measured} of {without.edits} "
                f"measured without the LoRA, {with_editor.measured} of {with_editor.edits} with it), so nothing "
                "says whether the editor LoRA helps"
            ),
        )
    p_value = mcnemar_exact_p(only_with, only_without)
    verdict: EditorVerdict = "not distinguishable"
    if p_value < ALPHA:
        verdict = "better" if only_without > only_with else "worse"
    words = {
        "better": "the editor LoRA drifts less",
        "worse": "the editor LoRA drifts more",
        "not distinguishable": "no difference shows at this sample size",
    }[verdict]
    return EditorComparison(
        without=without,
        with_editor=with_editor,
        pairs=len(paired),
        discordant=(only_with, only_without),
        p_value=round(p_value, 4),
        verdict=verdict,
        summary=(
            f"{words}: drifted {without.drifted}/{without.measured} without the LoRA, "
            f"{with_editor.drifted}/{with_editor.measured} with it over {len(paired)} paired edits "
            f"(exact McNemar p = {p_value:.3g})"
        ),
    )
