"""Flywheel 1 (seed 001 steps 1.5–1.8): synthetic → filter → review → pristine → v(N+1) → retrain → compare.

A round, each stage recorded on its `flywheel_round` row before the next starts (a resumed round continues
after the last stage it finished; every stage is idempotent besides — generation reuses finished calls by
fingerprint, analyses are cached, an unchanged dataset returns its version, training reuses a finished run
with the same settings, evaluation draws only what is missing):

1. plan — coverage of the current version vN against the model card (evaluation/coverage.py); a prompt
   matrix that covers the gaps first, then novel scenarios; `variants` seeds per prompt (fixed per round,
   prompt and variant). The round's worst-case cost is estimated first: a round the budget cannot pay for
   does not start.
2. generate — with the active LoRA through the router (budget reserved per call; NSFW prompts only for an
   NSFW character and only on self-hosted engines); kind `synthetic`, the checkpoint in `attributes`.
3. filter — evaluation/candidate_filter.py: no face, quality, another person, several people, near copy of a
   training image; the survivors ordered by usefulness.
4. review — the queue waits for the user (`flenwheel review NAME ASSET --label pristine`) unless `auto_margin`
   is set: then candidates with identity margin ≥ it are labelled pristine by the policy (source `policy`;
   a user's label always wins). Without a policy and with candidates unreviewed the round pauses.
5. dataset — v(N+1) = vN's images + the pristine ones, with lineage and a diff; none pristine → no version.
6. train — the same trainer and settings as the run of the LoRA in use, on v(N+1).
7. evaluate + compare — the same prompts, seeds, strengths and size as that run's evaluation; the comparison
   (evaluation/comparison.py) says better / worse / not distinguishable / not measurable.

The loop (`run_flywheel`) stops when the model card's 80 % target is met (measured), when the next round
would exceed the budget, when a measured comparison shows no improvement (not "better"), or when a round
waits for review. A comparison that measured nothing never stops the loop and never counts as improvement:
the loop does not act on measurements it did not make.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import Field
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from flenwheel.datasets.curate import current_review
from flenwheel.datasets.versions import build_dataset_version, get_dataset_version
from flenwheel.domain import AssetKind, Frozen, ReviewLabel, ReviewSource
from flenwheel.errors import InvalidInput
from flenwheel.evaluation.candidate_filter import Candidate, FilterReport, filter_candidates
from flenwheel.evaluation.comparison import Comparison, compare_benchmarks, side_from_samples
from flenwheel.evaluation.coverage import Coverage, ImageTags, coverage, coverage_change
from flenwheel.evaluation.prompts import ANGLES, BODY_POSES, EXPRESSIONS, PORTRAIT_TEMPLATE
from flenwheel.jobs.base import JobContext, LocalJobContext
from flenwheel.providers.base import ImageProvider
from flenwheel.quality import QualityThresholds
from flenwheel.store.models import (
    Asset,
    Checkpoint,
    DatasetItem,
    DatasetVersion,
    Evaluation,
    FlywheelRound,
    Review,
    TrainingRun,
)
from flenwheel.store.project import Project, get_character

DOING = {
    "planned": "coverage and the prompt matrix",
    "generated": "synthetic images with the active LoRA",
    "filtered": "AI filter (identity, quality, near copies)",
    "reviewed": "review queue",
    "dataset": "next dataset version",
    "trained": "retraining with the same settings",
    "evaluated": "evaluating on the model-card prompts",
    "compared": "comparing with the previous version",
}
STAGES = ("planned", "generated", "filtered", "reviewed", "dataset", "trained", "evaluated", "compared")
# Seed 001 step 1.5's "novel scenarios", after the gaps; NSFW ones only for an NSFW character that asked.
SCENARIOS = (
    "photo of {trigger} in a spaceship, upper body",
    "photo of {trigger} sitting on a chair, full body",
    "photo of {trigger} walking in a city street at night, upper body",
    "photo of {trigger} reading in a library, close-up",
    "photo of {trigger} on a beach at sunset, full body",
    "photo of {trigger} laughing in a forest, upper body",
)
NSFW_SCENARIOS = ("boudoir photo of {trigger}, lingerie, upper body",)


class FlywheelOptions(Frozen):
    """What one `flenwheel flywheel` asks for. Seed 001 step 1.5 asks 4–8 variants per prompt; fewer are
    allowed for quick looks (the demo)."""

    rounds: int = Field(default=1, ge=1, le=20)
    auto_margin: float | None = Field(default=None, ge=0.0, le=1.0)
    prompts: int = Field(default=6, ge=1, le=40)
    variants: int = Field(default=4, ge=1, le=8)
    size: int | None = Field(default=None, ge=64, le=2048, multiple_of=8)  # default: 64 on tiny, else 512
    steps: int | None = Field(default=None, ge=1, le=150)  # default: 4 on tiny, else 20
    nsfw: bool = False  # add NSFW scenarios (an NSFW character only; self-hosted engines only)


class PlannedPrompt(Frozen):
    key: str  # a model-card cell key, or "scenario-N"
    text: str
    seeds: tuple[int, ...]
    nsfw: bool = False


class RoundOutcome(Frozen):
    number: int
    status: str  # finished | review | stopped
    stage: str
    record: dict[str, Any]


class FlywheelOutcome(Frozen):
    character: str
    rounds: tuple[RoundOutcome, ...]
    stopped_because: str
    report: str | None = None


# -- the loop ---------------------------------------------------------------------------------------------


def run_flywheel(
    project: Project,
    character_name: str,
    options: FlywheelOptions,
    ctx: JobContext | None = None,
    on_stage: Callable[[str], None] = lambda _message: None,
    write_report: bool = True,
    providers: list[ImageProvider] | None = None,
) -> FlywheelOutcome:
    """Run up to `options.rounds` rounds (an unfinished round is resumed first) and stop by the stated rule.
    `providers` replaces the configured engines (tests, embedding apps), as in `evaluate_run`."""
    ctx = ctx or LocalJobContext()
    done: list[RoundOutcome] = []
    stopped = f"ran the {options.rounds} round(s) asked for"
    for _ in range(options.rounds - _finished_by_job(project, character_name, ctx.job_id)):
        outcome = run_round(project, character_name, options, ctx, on_stage, providers)
        done.append(outcome)
        reason = _stop_reason(outcome)
        if reason is not None:
            stopped = reason
            break
    report = None
    if write_report:
        from flenwheel.report.flywheel import write_flywheel_report

        target = project.root / "reports" / f"{_file_safe(character_name)}-flywheel.html"
        report = str(write_flywheel_report(project, character_name, target))
    return FlywheelOutcome(
        character=character_name, rounds=tuple(done), stopped_because=stopped, report=report
    )


def _finished_by_job(project: Project, character_name: str, job_id: int | None) -> int:
    """Rounds this job already finished (a retried job runs only the rounds it has left)."""
    if job_id is None:
        return 0
    with project.db.session() as session:
        character = get_character(session, character_name)
        return int(
            session.scalar(
                select(func.count(FlywheelRound.id)).where(
                    FlywheelRound.character_id == character.id,
                    FlywheelRound.job_id == job_id,
                    FlywheelRound.status == "finished",
                )
            )
            or 0
        )


def _stop_reason(outcome: RoundOutcome) -> str | None:
    record = outcome.record
    if outcome.status == "review":
        return f"round {outcome.number} waits for review: {record.get('review', {}).get('advice', '')}"
    if outcome.status == "stopped":
        return str(record.get("stopped", "stopped"))
    comparison = record.get("comparison")
    if not comparison:
        return None  # no new data this round: nothing compared, nothing to stop on
    if comparison["verdict"] == "not measurable":
        return None  # never act on a measurement that was not made
    if comparison["target_met"]:
        return f"round {outcome.number} met the model card's 80 % target"
    if comparison["verdict"] != "better":
        return f"round {outcome.number} did not improve ({comparison['verdict']}): the loop stops"
    return None


def flywheel_rounds(project: Project, character_name: str) -> list[RoundOutcome]:
    with project.db.session() as session:
        character = get_character(session, character_name)
        rows = session.scalars(
            select(FlywheelRound)
            .where(FlywheelRound.character_id == character.id)
            .order_by(FlywheelRound.number)
        ).all()
        return [RoundOutcome(number=r.number, status=r.status, stage=r.stage, record=r.record) for r in rows]


@dataclass(frozen=True)
class RoundRun:
    """What every stage of a round is given."""

    project: Project
    name: str
    options: FlywheelOptions
    ctx: JobContext
    number: int
    resumed_review: bool
    providers: list[ImageProvider] | None


# -- one round --------------------------------------------------------------------------------------------


def run_round(
    project: Project,
    character_name: str,
    options: FlywheelOptions,
    ctx: JobContext,
    on_stage: Callable[[str], None] = lambda _message: None,
    providers: list[ImageProvider] | None = None,
) -> RoundOutcome:
    """Resume the character's unfinished round, or start the next one, and run it as far as it can go."""
    round_id, number = _open_round(project, character_name, ctx.job_id)
    record, status = _load(project, round_id)
    resumed_review = status == "review"  # run again after a pause for review: go on with the labels given
    record = {k: v for k, v in record.items() if k not in ("status", "stopped")}  # a pause is not a verdict
    stage = _stage(project, round_id)
    steps: list[tuple[str, Callable[[RoundRun, dict[str, Any]], dict[str, Any] | None]]] = [
        ("planned", _plan),
        ("generated", _generate),
        ("filtered", _filter),
        ("reviewed", _review),
        ("dataset", _dataset),
        ("trained", _train),
        ("evaluated", _evaluate),
        ("compared", _compare),
    ]
    for name, function in steps:
        if STAGES.index(name) <= _index(stage):
            continue
        ctx.check_cancelled()
        on_stage(f"round {number}: {DOING[name]}")
        update = function(
            RoundRun(project, character_name, options, ctx, number, resumed_review, providers), record
        )
        if update is None:  # the round ends here (stopped, waiting for review, or nothing new to train)
            return _outcome(project, round_id)
        record = {**record, **update}
        if record.get("status") in ("stopped", "review"):
            _save(project, round_id, record, stage, record["status"])
            return _outcome(project, round_id)
        stage = name
        _save(project, round_id, record, stage, "running")
        if record.get("dataset", {}).get("created") is False and name == "dataset":
            break  # no pristine image: vN stays, nothing to retrain or compare
    _save(project, round_id, record, "compared", "finished", finished=True)
    return _outcome(project, round_id)


def _open_round(project: Project, character_name: str, job_id: int | None) -> tuple[int, int]:
    with project.db.session() as session:
        character = get_character(session, character_name)
        open_round = session.scalar(
            select(FlywheelRound)
            .where(FlywheelRound.character_id == character.id, FlywheelRound.status != "finished")
            .order_by(FlywheelRound.number.desc())
            .limit(1)
        )
        if open_round is not None:
            if job_id is not None:
                open_round.job_id = job_id
            return open_round.id, open_round.number
        number = (
            session.scalar(
                select(func.max(FlywheelRound.number)).where(FlywheelRound.character_id == character.id)
            )
            or 0
        ) + 1
        row = FlywheelRound(character_id=character.id, number=number, job_id=job_id, stage="", record={})
        session.add(row)
        session.flush()
        return row.id, number


def _load(project: Project, round_id: int) -> tuple[dict[str, Any], str]:
    with project.db.session() as session:
        row = session.get_one(FlywheelRound, round_id)
        return dict(row.record), row.status


def _stage(project: Project, round_id: int) -> str:
    with project.db.session() as session:
        return session.get_one(FlywheelRound, round_id).stage


def _index(stage: str) -> int:
    return STAGES.index(stage) if stage in STAGES else -1


def _save(
    project: Project, round_id: int, record: dict[str, Any], stage: str, status: str, finished: bool = False
) -> None:
    with project.db.session() as session:
        row = session.get_one(FlywheelRound, round_id)
        row.record, row.stage, row.status = record, stage, status
        if finished:
            row.finished_at = datetime.now(UTC)


def _outcome(project: Project, round_id: int) -> RoundOutcome:
    with project.db.session() as session:
        row = session.get_one(FlywheelRound, round_id)
        return RoundOutcome(number=row.number, status=row.status, stage=row.stage, record=dict(row.record))


# -- stages -----------------------------------------------------------------------------------------------


def _plan(r: RoundRun, record: dict[str, Any]) -> dict[str, Any]:
    project, name, options, number = r.project, r.name, r.options, r.number
    from flenwheel.pipeline.studio import decide_mode

    mode = decide_mode(project, name)
    if mode.mode != "lora" or mode.checkpoint_id is None or mode.lora is None:
        raise InvalidInput(
            f"{name!r} has no active LoRA to generate with ({mode.reason}): train and evaluate it, then "
            f"`flenwheel activate {name} recommended` (or activate a checkpoint you chose)"
        )
    version = get_dataset_version(project, name)
    with project.db.session() as session:
        character = get_character(session, name)
        if options.nsfw and not character.nsfw:
            raise InvalidInput(
                f"{name!r} is not an NSFW character: NSFW flywheel prompts are only for characters created "
                "with --nsfw"
            )
        trigger = f"{character.token} {character.class_word}"
        run = session.get_one(TrainingRun, session.get_one(Checkpoint, mode.checkpoint_id).run_id)
        run_id, base_model = run.id, str(run.spec.get("base_model", "tiny"))
        remaining = round(character.budget_usd - character.spent_usd, 6)
    current = version_coverage(project, version.items)
    prompts = prompt_matrix(current, trigger, options, number)
    tiny = base_model == "tiny"
    size = options.size or (64 if tiny else 512)
    steps = options.steps or (4 if tiny else 20)
    estimate = _estimate(project, prompts, size, steps, mode.lora.path, mode.lora.strength, r.providers)
    plan = {
        "base_version": {"id": version.id, "number": version.number},
        "checkpoint": mode.checkpoint_id,
        "strength": mode.strength,
        "lora": mode.lora.path,
        "run": run_id,
        "size": size,
        "steps": steps,
        "coverage": current.model_dump(),
        "prompts": [p.model_dump() for p in prompts],
        "estimate_usd": estimate,
        "budget_left_usd": remaining,
        "auto_margin": options.auto_margin,
    }
    if estimate > remaining + 1e-9:
        return {
            **plan,
            "status": "stopped",
            "stopped": (
                f"the budget would be exceeded: round {number} may cost up to ${estimate:.2f} and "
                f"${remaining:.2f} is left (raise it with `flenwheel character budget {name} USD`)"
            ),
        }
    return plan


def _estimate(
    project: Project,
    prompts: list[PlannedPrompt],
    size: int,
    steps: int,
    lora: str,
    strength: float,
    providers: list[ImageProvider] | None,
) -> float:
    """The round's worst case: each request's estimate on the first engine the router would pick."""
    from flenwheel.providers.registry import ProviderRegistry
    from flenwheel.providers.router import plan_route

    if providers is None:
        providers = ProviderRegistry.shared(project.settings).all()
    total = 0.0
    for prompt in prompts:
        request = _request(prompt, prompt.seeds[0], size, steps, lora, strength)
        route = plan_route(providers, request, prompt.nsfw)
        total += route.providers[0].estimate_cost(request) * len(prompt.seeds)
    return round(total, 6)


def _request(prompt: PlannedPrompt, seed: int, size: int, steps: int, lora: str, strength: float) -> Any:
    from flenwheel.providers.base import LoraRef, TextToImage

    return TextToImage(
        prompt=prompt.text,
        seed=seed,
        width=size,
        height=size,
        steps=steps,
        loras=(LoraRef(path=lora, strength=strength),),
        nsfw=prompt.nsfw,
    )


def _generate(r: RoundRun, record: dict[str, Any]) -> dict[str, Any]:
    project, name, ctx = r.project, r.name, r.ctx
    from flenwheel.pipeline.generation import run_generation

    prompts = [PlannedPrompt.model_validate(p) for p in record["prompts"]]
    total = sum(len(p.seeds) for p in prompts)
    candidates: list[int] = []
    cost = 0.0
    note = None
    for prompt in prompts:
        for seed in prompt.seeds:
            ctx.check_cancelled()
            outcome = run_generation(
                project,
                name,
                _request(prompt, seed, record["size"], record["steps"], record["lora"], record["strength"]),
                kind=AssetKind.SYNTHETIC,
                ctx=ctx,
                providers=r.providers,
                attributes={
                    "stage": "flywheel",
                    "round": r.number,
                    "cell": prompt.key,
                    "checkpoint": record["checkpoint"],
                },
            )
            candidates.extend(output.asset_id for output in outcome.outputs)
            cost += outcome.cost_usd
            note = note or outcome.note
            ctx.progress(len(candidates), total, f"synthetic image {len(candidates)} of {total}")
    return {"candidates": candidates, "generation_cost_usd": round(cost, 6), "note": note}


def _filter(r: RoundRun, record: dict[str, Any]) -> dict[str, Any]:
    project, name = r.project, r.name
    report = filter_round_candidates(project, name, record["candidates"], record["base_version"]["id"])
    return {"filter": _filter_record(report)}


def filter_round_candidates(
    project: Project, name: str, asset_ids: list[int], base_version_id: int
) -> FilterReport:
    """Analyse (cached) and filter candidate assets against the character as dataset `base_version_id`
    defines it; removed candidates get a gate `reject` label with the reason."""
    from flenwheel.evaluation.scoring import cached_analyses, load_reference_set
    from flenwheel.faces.dlib_backend import DlibFaceAnalyzer

    analyzer = DlibFaceAnalyzer(detect_max_side=project.settings.detect_max_side)
    with project.db.session() as session:
        character_id = get_character(session, name).id
        items = session.scalars(select(DatasetItem).where(DatasetItem.dataset_version_id == base_version_id))
        current = version_coverage(project, list(items))
    references = load_reference_set(project, character_id, base_version_id, analyzer)
    analyses = cached_analyses(project, asset_ids, analyzer)
    if any(analysis.pose_analyzer is None for analysis in analyses.values()):  # the body pose, for pose cells
        from flenwheel.evaluation.scoring import body_poses
        from flenwheel.poses.mediapipe_backend import shared_pose_analyzer

        with project.db.session() as session:
            bodies = body_poses(project, session, asset_ids)  # measured now and kept on the cached analysis
        pose_id = shared_pose_analyzer().id
        analyses = {
            i: a if a.pose_analyzer else a.model_copy(update={"pose_analyzer": pose_id, "body": bodies[i]})
            for i, a in analyses.items()
        }
    report = filter_candidates(
        [Candidate(asset_id=i, analysis=analyses[i]) for i in asset_ids],
        references,
        QualityThresholds(),
        current.gaps(),
    )
    with project.db.session() as session:
        for verdict in report.verdicts:
            asset = session.get_one(Asset, verdict.asset_id)
            asset.attributes = {**(asset.attributes or {}), "filter": verdict.model_dump()}
            if not verdict.kept:
                gate = [r for r in asset.reviews if r.source == ReviewSource.GATE]
                if not gate or gate[-1].reason != verdict.reason:
                    session.add(
                        Review(
                            asset_id=asset.id,
                            label=ReviewLabel.REJECT,
                            reason=f"flywheel filter: {verdict.reason}",
                            source=ReviewSource.GATE,
                            identity_distance=verdict.identity_distance,
                        )
                    )
    return report


def _filter_record(report: FilterReport) -> dict[str, Any]:
    return {
        "candidates": report.candidates,
        "kept": report.kept,
        "removed": report.removed,
        "removed_share": report.removed_share,
        "removed_by": report.removed_by,
        "queue": [v.model_dump() for v in report.queue],
        "removed_assets": [v.model_dump() for v in report.verdicts if not v.kept],
    }


def _review(r: RoundRun, record: dict[str, Any]) -> dict[str, Any]:
    project, name, options = r.project, r.name, r.options
    outcome = review_queue(project, name, record["filter"]["queue"], options.auto_margin)
    waiting = outcome["unreviewed"]
    if waiting and options.auto_margin is None and not r.resumed_review:
        ids = ", ".join(str(item["asset_id"]) for item in record["filter"]["queue"][:5])
        outcome["advice"] = (
            f"{len(waiting)} candidate(s) wait in the review queue (best first: {ids}…): label each with "
            f"`flenwheel review {name} ASSET --label pristine` (or reject with --reason), then run "
            f"`flenwheel flywheel {name}` again to continue this round"
        )
        return {"review": outcome, "status": "review"}
    return {"review": outcome, "status": "running"}


def review_queue(
    project: Project, name: str, queue: list[dict[str, Any]], auto_margin: float | None
) -> dict[str, Any]:
    """Apply the auto policy (if any) to the queue, then count who decided what: the user's labels, the
    policy's pristine picks (identity margin ≥ `auto_margin`), and the candidates nobody labelled."""
    with project.db.session() as session:
        for item in queue:
            asset = session.scalars(
                select(Asset).where(Asset.id == item["asset_id"]).options(selectinload(Asset.reviews))
            ).one()
            review = current_review(asset)
            decided = review is not None and review.source in (ReviewSource.USER, ReviewSource.POLICY)
            margin = item.get("margin")
            if not decided and auto_margin is not None and margin is not None and margin >= auto_margin:
                policy = Review(
                    asset_id=asset.id,
                    label=ReviewLabel.PRISTINE,
                    reason=f"auto policy: identity margin {margin:.2f} ≥ {auto_margin:.2f}",
                    source=ReviewSource.POLICY,
                    identity_distance=item.get("identity_distance"),
                )
                session.add(policy)
                asset.reviews.append(policy)
        session.flush()
        decisions: list[dict[str, Any]] = []
        for item in queue:
            asset = session.scalars(
                select(Asset).where(Asset.id == item["asset_id"]).options(selectinload(Asset.reviews))
            ).one()
            review = current_review(asset)
            decided_by = review if review is not None and review.source != ReviewSource.GATE else None
            decisions.append(
                {
                    "asset_id": asset.id,
                    "label": decided_by.label if decided_by else None,
                    "by": decided_by.source if decided_by else None,
                    "reason": decided_by.reason if decided_by else "",
                }
            )
    pristine = [d for d in decisions if d["label"] == ReviewLabel.PRISTINE]
    return {
        "decisions": decisions,
        "pristine": [d["asset_id"] for d in pristine],
        "pristine_by_user": sum(d["by"] == ReviewSource.USER for d in pristine),
        "pristine_by_policy": sum(d["by"] == ReviewSource.POLICY for d in pristine),
        "labelled_by_user": sum(d["by"] == ReviewSource.USER for d in decisions),
        "unreviewed": [d["asset_id"] for d in decisions if d["by"] is None],
        "auto_margin": auto_margin,
    }


def _dataset(r: RoundRun, record: dict[str, Any]) -> dict[str, Any]:
    project, name = r.project, r.name
    return {"dataset": next_version(project, name, r.number, record["base_version"]["id"], record["review"])}


def next_version(
    project: Project, name: str, number: int, base_version_id: int, review: dict[str, Any]
) -> dict[str, Any]:
    """v(N+1) = vN's images + this round's pristine ones (built from the current labels, so the vN images the
    user has since rejected leave too), with lineage and a diff against vN; `created` False when nothing
    changed."""
    if not review["pristine"]:
        return {"created": False, "why": "no candidate was labelled pristine: vN stays, nothing to retrain"}
    reasons = {d["asset_id"]: {"by": d["by"], "reason": d["reason"]} for d in review["decisions"]}
    lineage = {
        "flywheel_round": number,
        "base_version": base_version_id,
        "pristine": [{"asset_id": i, **reasons.get(i, {})} for i in review["pristine"]],
    }
    caption_pristine(project, name, review["pristine"])
    built = build_dataset_version(project, name, lineage=lineage)
    with project.db.session() as session:
        base = session.get_one(DatasetVersion, base_version_id)
        new = session.get_one(DatasetVersion, built.version.id)
        before, after = list(base.items), list(new.items)
        base_label, new_label, new_number = base.label, new.label, new.number
    old_ids, new_ids = {i.asset_id for i in before}, {i.asset_id for i in after}
    old_cov, new_cov = version_coverage(project, before), version_coverage(project, after)
    return {
        "created": built.created,
        "version": {"id": built.version.id, "number": new_number, "label": new_label},
        "base": base_label,
        "added": sorted(new_ids - old_ids),
        "removed": sorted(old_ids - new_ids),
        "coverage_before": old_cov.model_dump(),
        "coverage_after": new_cov.model_dump(),
        "coverage_change": coverage_change(old_cov, new_cov),
        "lineage": lineage,
    }


def caption_pristine(project: Project, name: str, asset_ids: list[int]) -> None:
    """Caption pristine images as curate captions the character's photos (template, trigger, measured angle,
    shot and expression); a caption the user edited stays."""
    from flenwheel.captions import DEFAULT_TEMPLATE, render_caption
    from flenwheel.domain import AssetAnalysis
    from flenwheel.store.models import Analysis

    with project.db.session() as session:
        character = get_character(session, name)
        for asset_id in asset_ids:
            asset = session.get_one(Asset, asset_id)
            stored = session.get(Analysis, asset_id)
            if asset.caption_edited or stored is None:
                continue
            analysis = AssetAnalysis.model_validate(stored.data)
            asset.caption = render_caption(
                character.caption_template or DEFAULT_TEMPLATE,
                character.token,
                character.class_word,
                analysis.angle,
                analysis.shot,
                analysis.expression,
            )


def _train(r: RoundRun, record: dict[str, Any]) -> dict[str, Any]:
    project, name, ctx = r.project, r.name, r.ctx
    from flenwheel.pipeline.training import train_character
    from flenwheel.trainers.registry import TrainerRegistry

    with project.db.session() as session:
        base_run = session.get_one(TrainingRun, record["run"])
        trainer_id, spec = base_run.trainer, dict(base_run.spec)
    spec.pop("trigger", None)
    spec.pop("studio_activation", None)
    trainer = TrainerRegistry.from_settings(project.settings).get(trainer_id)
    outcome = train_character(
        project,
        name,
        trainer,
        version_number=record["dataset"]["version"]["number"],
        ctx=ctx,
        reuse_finished=True,
        **spec,
    )
    return {
        "training": {
            "run": outcome.run_id,
            "trainer": trainer_id,
            "settings": f"the same as run {record['run']}",
            "steps": outcome.steps,
            "final_loss": outcome.final_loss,
            "cost_usd": outcome.cost_usd,
        }
    }


def _evaluate(r: RoundRun, record: dict[str, Any]) -> dict[str, Any]:
    project, name, ctx = r.project, r.name, r.ctx
    from flenwheel.pipeline.evaluation import evaluate_run

    base = base_evaluation(project, name, record["run"], ctx, r.providers)
    config = base["config"]
    evaluated = {}
    for key, run_id in (("before", record["run"]), ("after", record["training"]["run"])):
        if key == "before":
            evaluated[key] = base["id"]
            continue
        outcome = evaluate_run(
            project,
            name,
            run_id=run_id,
            strengths=config["strengths"],
            prompts=config["prompts"],
            size=config.get("size"),
            steps=config.get("steps"),
            ctx=ctx,
            providers=r.providers,
        )
        evaluated[key] = outcome.evaluation_id
    return {"evaluations": evaluated}


def base_evaluation(
    project: Project, name: str, run_id: int, ctx: JobContext, providers: list[ImageProvider] | None = None
) -> dict[str, Any]:
    """The newest finished evaluation of run `run_id` (evaluated now with the quick set when none exists)."""
    with project.db.session() as session:
        row = session.scalar(
            select(Evaluation)
            .where(Evaluation.run_id == run_id, Evaluation.status == "succeeded")
            .order_by(Evaluation.id.desc())
            .limit(1)
        )
        if row is not None:
            return {"id": row.id, "config": dict(row.config)}
    from flenwheel.pipeline.evaluation import evaluate_run

    outcome = evaluate_run(project, name, run_id=run_id, prompts="quick", ctx=ctx, providers=providers)
    with project.db.session() as session:
        return {
            "id": outcome.evaluation_id,
            "config": dict(session.get_one(Evaluation, outcome.evaluation_id).config),
        }


def _compare(r: RoundRun, record: dict[str, Any]) -> dict[str, Any]:
    project, name = r.project, r.name
    comparison = compare_evaluations(
        project,
        name,
        record["evaluations"]["before"],
        record["evaluations"]["after"],
        before_label=f"v{record['base_version']['number']}",
        after_label=record["dataset"]["version"]["label"],
        before_pick=(record["checkpoint"], record["strength"]),
    )
    return {"comparison": comparison.model_dump()}


def compare_evaluations(
    project: Project,
    name: str,
    before_id: int,
    after_id: int,
    before_label: str,
    after_label: str,
    before_pick: tuple[int | None, float | None] = (None, None),
) -> Comparison:
    """Compare two evaluations' picks on the same prompts and seeds. `before_pick`: the LoRA in use (checkpoint,
    strength), when it is a cell of `before_id`'s grid; else that evaluation's own selection."""
    from flenwheel.pipeline.evaluation import load_samples

    with project.db.session() as session:
        allow_nsfw = get_character(session, name).nsfw
        sides = []
        for evaluation_id, label, pick in (
            (before_id, before_label, before_pick),
            (after_id, after_label, (None, None)),
        ):
            evaluation = session.get_one(Evaluation, evaluation_id)
            samples = load_samples(project, evaluation_id)
            checkpoint, strength = pick
            if checkpoint is None or not any(
                s.checkpoint_id == checkpoint and round(s.strength, 4) == round(strength or 0, 4)
                for s in samples
            ):
                checkpoint, strength = evaluation.selected_checkpoint_id, evaluation.selected_strength
            if checkpoint is None or strength is None:
                raise InvalidInput(
                    f"evaluation {evaluation_id} has no selection yet: run it to the end first"
                )
            sides.append(
                side_from_samples(
                    f"{label} (run {evaluation.run_id})",
                    samples,
                    {str(k): int(v) for k, v in evaluation.config.get("seeds", {}).items()},
                    float(evaluation.config.get("identity_threshold", project.settings.identity_threshold)),
                    checkpoint,
                    strength,
                    allow_nsfw,
                )
            )
    return compare_benchmarks(sides[0], sides[1])


# -- coverage and prompts ---------------------------------------------------------------------------------


def version_coverage(project: Project, items: list[DatasetItem]) -> Coverage:
    """The model-card coverage of a dataset version's items, from their cached analyses (angle, shot and
    expression as frozen at build time; the body pose as measured)."""
    from flenwheel.domain import AssetAnalysis
    from flenwheel.store.models import Analysis

    with project.db.session() as session:
        rows = session.scalars(select(Analysis).where(Analysis.asset_id.in_([i.asset_id for i in items])))
        analyses = {row.asset_id: AssetAnalysis.model_validate(row.data) for row in rows}
    return coverage(ImageTags.of(analyses[i.asset_id]) for i in items if i.asset_id in analyses)


def prompt_matrix(
    current: Coverage, trigger: str, options: FlywheelOptions, round_number: int
) -> list[PlannedPrompt]:
    """`options.prompts` prompts: the gap cells first (missing, thin, not measured), then novel scenarios;
    `options.variants` seeds each, fixed by round, prompt and variant (a rerun draws the same images)."""
    texts: list[tuple[str, str, bool]] = []
    for cell in current.gaps():
        if cell.pose == "portrait":
            assert cell.angle is not None and cell.expression is not None
            text = PORTRAIT_TEMPLATE.format(
                trigger=trigger, expression=EXPRESSIONS[cell.expression], angle=ANGLES[cell.angle]
            ).replace("portrait of", "photo of", 1)
        else:
            text = BODY_POSES[cell.pose].format(trigger=trigger)
        texts.append((cell.key, text, False))
    scenarios = [*SCENARIOS, *(NSFW_SCENARIOS if options.nsfw else ())]
    for index, template in enumerate(scenarios, start=1):
        texts.append((f"scenario-{index}", template.format(trigger=trigger), template in NSFW_SCENARIOS))
    if options.nsfw:  # asked for: keep one NSFW scenario in even a short matrix
        texts.insert(min(options.prompts - 1, len(texts)), texts.pop())
    chosen = texts[: options.prompts]
    return [
        PlannedPrompt(
            key=key,
            text=text,
            seeds=tuple(_seed(round_number, key, variant) for variant in range(options.variants)),
            nsfw=nsfw,
        )
        for key, text, nsfw in chosen
    ]


def _seed(round_number: int, key: str, variant: int) -> int:
    digest = hashlib.sha256(f"flenwheel-flywheel:{round_number}:{key}:{variant}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def _file_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
