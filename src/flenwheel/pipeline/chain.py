"""The background chain of seed 000: sheet → identity gate → dataset version → train → evaluate → activate.

The activate stage reports evaluation's decision: a pick is activated only when measured good enough
(evaluation/activation.py), so on the tiny model the chain ends "recommended, not activated (not measurable)".

Each stage is its own job (kind `chain_<stage>`), a child of one `chain` job. A stage does its work, then
submits the next stage — unless that child already exists, so a stage retried after a crash never starts
the rest twice. Every stage is idempotent: the sheet reuses stored anchors, curation its cached analyses,
an unchanged dataset returns its latest version, training resumes (or reuses a finished run with the same
settings), and evaluation draws only what is missing. A stage that would overspend the character's budget
fails with the budget message, and the chain stops there, cleanly.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from flenwheel.errors import InvalidInput
from flenwheel.jobs.base import JobContext, JobRequest, Queue
from flenwheel.store.models import Job
from flenwheel.store.project import Project, get_character

STAGES = ("sheet", "gate", "dataset", "train", "evaluate", "activate")
STAGE_QUEUE = {
    "sheet": Queue.GPU,
    "gate": Queue.CPU,
    "dataset": Queue.CPU,
    "train": Queue.GPU,
    "evaluate": Queue.GPU,
    "activate": Queue.CPU,
}


def stage_kind(stage: str) -> str:
    return f"chain_{stage}"


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    """The chain's options checked against their model (pipeline/jobs.py ChainOptions): unknown keys and
    out-of-range values are an InvalidInput naming the field, before any stage runs."""
    from pydantic import ValidationError

    from flenwheel.pipeline.jobs import ChainOptions

    try:
        checked = ChainOptions.model_validate(options)
    except ValidationError as exc:
        known = ", ".join(ChainOptions.model_fields)
        problems = "; ".join(
            f"unknown chain option {'.'.join(str(p) for p in error['loc'])} (use {known})"
            if error["type"] == "extra_forbidden" and len(error["loc"]) == 1
            else f"chain option {'.'.join(str(p) for p in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise InvalidInput(f"the chain's options are not valid: {problems}") from None
    return {
        "trainer": checked.trainer,
        "training": checked.training.overrides(),
        "evaluation": checked.evaluation.settings(),
        "skip": list(checked.skip),
    }


def start_chain(
    project: Project,
    backend: Any,
    character_name: str,
    options: dict[str, Any] | None = None,
    owner_id: int | None = None,
) -> int:
    """Submit the chain's root job; it submits the first stage. Returns the root job id."""
    options = check_options(dict(options or {}))
    with project.db.session() as session:
        character_id = get_character(session, character_name).id
    job_id: int = backend.submit(
        JobRequest(
            kind="chain",
            queue=Queue.CPU,
            character_id=character_id,
            owner_id=owner_id,
            payload={"character": character_name, "options": options},
        )
    )
    return job_id


def chain_job(project: Project, payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """The root: checks the options and submits the first stage not skipped."""
    options = check_options(dict(payload.get("options", {})))
    root = ctx.job_id
    first = _next_stage(None, options)
    child = _submit_stage(project, payload, root, first, ctx) if first else None
    ctx.progress(1, 1, f"chain started at {first}")
    return {"stages": [s for s in STAGES if s not in options.get("skip", [])], "first_job": child}


def chain_status(project: Project, root_id: int) -> list[dict[str, Any]]:
    """The stage jobs of a chain, in order, with status, progress and result."""
    with project.db.session() as session:
        rows = session.scalars(select(Job).where(Job.parent_id == root_id).order_by(Job.id)).all()
        return [
            {
                "job": row.id,
                "stage": row.kind.removeprefix("chain_"),
                "status": row.status,
                "progress": [row.progress_done, row.progress_total],
                "message": row.message,
                "error": row.error,
                "result": row.result,
                "cost_usd": row.cost_usd,
            }
            for row in rows
        ]


def _next_stage(stage: str | None, options: dict[str, Any]) -> str | None:
    skip = set(options.get("skip", []))
    start = 0 if stage is None else STAGES.index(stage) + 1
    for candidate in STAGES[start:]:
        if candidate not in skip:
            return candidate
    return None


def _submit_stage(
    project: Project, payload: dict[str, Any], root: int | None, stage: str, ctx: JobContext
) -> int:
    """Submit `stage` under `root` through the run's own backend, unless it exists already (a retried stage
    must not fork the chain)."""
    with project.db.session() as session:
        existing = session.scalar(select(Job.id).where(Job.parent_id == root, Job.kind == stage_kind(stage)))
        character_id = get_character(session, payload["character"]).id
    if existing is not None:
        return int(existing)
    return ctx.submit(
        JobRequest(
            kind=stage_kind(stage),
            queue=STAGE_QUEUE[stage],
            character_id=character_id,
            parent_id=root,
            payload={"character": payload["character"], "options": payload.get("options", {}), "root": root},
        )
    )


def _run_stage(stage: str, project: Project, payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    root = _trusted_root(project, stage, payload, ctx)
    options = check_options(dict(payload.get("options", {})))
    result = STAGE_FUNCTIONS[stage](project, payload["character"], options, ctx)
    following = _next_stage(stage, options)
    if following is not None:
        result["next_job"] = _submit_stage(project, {**payload, "options": options}, root, following, ctx)
    return result


def _trusted_root(project: Project, stage: str, payload: dict[str, Any], ctx: JobContext) -> int | None:
    """The chain this stage belongs to, from the stage's own job row (its parent), never from the payload:
    a job that is not a child of a `chain` job of the same character is refused before it does anything."""
    if ctx.job_id is None:  # called directly (tests, the CLI): there is no job row to check against
        root = payload.get("root")
        return int(root) if root is not None else None
    with project.db.session() as session:
        own = session.get(Job, ctx.job_id)
        parent = session.get(Job, own.parent_id) if own is not None and own.parent_id is not None else None
        if (
            own is None
            or parent is None
            or parent.kind != "chain"
            or parent.character_id != own.character_id
            or payload.get("root", parent.id) != parent.id
        ):
            raise InvalidInput(
                f"job {ctx.job_id} ({stage_kind(stage)}) is not a stage of a background chain of its character: "
                "chain stages are started only by the chain; submit `chain` to run one"
            )
        return parent.id


# -- the stages -----------------------------------------------------------------------------------------


def _sheet(project: Project, name: str, options: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    from flenwheel.pipeline.sheet import run_sheet
    from flenwheel.pipeline.stage import picked_base

    if picked_base(project, name) is None:
        ctx.progress(1, 1, "no base image picked: sheet skipped")
        return {"skipped": "no base image has been picked, so there is nothing to draw the sheet from"}
    result = run_sheet(project, name, ctx, pick_auto=True)
    variations = result.variations
    return {
        "anchors_picked": len(result.anchors.picks),
        "variations": {
            "passed": variations.passed,
            "drifted": variations.drifted,
            "not measurable": variations.not_measurable,
            "skipped": variations.skipped,
        },
        "cost_usd": result.anchors.cost_usd + variations.cost_usd,
        "note": result.anchors.note or variations.note,
    }


def _gate(project: Project, name: str, options: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    from flenwheel.pipeline.jobs import curate_job

    return curate_job(project, {"character": name}, ctx)


def _dataset(project: Project, name: str, options: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    from flenwheel.pipeline.jobs import dataset_build_job

    return dataset_build_job(project, {"character": name}, ctx)


def _train(project: Project, name: str, options: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    from flenwheel.pipeline.training import train_character
    from flenwheel.trainers.registry import TrainerRegistry

    trainer = TrainerRegistry.from_settings(project.settings).get(options.get("trainer", "local"))
    outcome = train_character(
        project, name, trainer, ctx=ctx, reuse_finished=True, **options.get("training", {})
    )
    return {
        "run": outcome.run_id,
        "steps": outcome.steps,
        "checkpoints": len(outcome.checkpoints),
        "final_loss": outcome.final_loss,
        "resumed": outcome.resumed,
        "cost_usd": outcome.cost_usd,
    }


def _evaluate(project: Project, name: str, options: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    from flenwheel.pipeline.evaluation import evaluate_run

    settings = dict(options.get("evaluation", {}))
    outcome = evaluate_run(project, name, ctx=ctx, **settings)
    return {
        "evaluation": outcome.evaluation_id,
        "run": outcome.run_id,
        "images": outcome.images,
        "generated_now": outcome.generated_now,
        "selected_checkpoint": outcome.selection.checkpoint_id,
        "selected_strength": outcome.selection.strength,
        "measured": outcome.selection.measured,
        "reason": outcome.selection.reason,
        "activated": outcome.decision.activated,
        "decision": outcome.decision.summary,
        "report": str(outcome.report) if outcome.report else None,
        "note": outcome.note,
    }


def _activate(project: Project, name: str, options: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Report what evaluation decided — activated, or only recommended (always so on the tiny model, whose
    images have no faces to measure) — and the mode the studio now draws in, with why."""
    from flenwheel.pipeline.activation import latest_decision
    from flenwheel.pipeline.studio import decide_mode

    decision = decide_mode(project, name)
    with project.db.session() as session:
        found = latest_decision(session, get_character(session, name))
    if found is None:
        raise InvalidInput(f"{name!r} has no finished evaluation to act on: run `flenwheel evaluate {name}`")
    evaluation_id, chosen, _at = found
    ctx.progress(1, 1, f"{chosen.summary}; studio mode: {decision.mode}")
    return {
        "evaluation": evaluation_id,
        "activated": chosen.activated,
        "decision": chosen.summary,  # e.g. "recommended, not activated (not measurable)"
        "why": chosen.reason,
        "recommended_checkpoint": chosen.checkpoint_id,
        "recommended_strength": chosen.strength,
        "mode": decision.mode,
        "reason": decision.reason,
        "checkpoint": decision.checkpoint_id,
        "strength": decision.strength,
    }


STAGE_FUNCTIONS = {
    "sheet": _sheet,
    "gate": _gate,
    "dataset": _dataset,
    "train": _train,
    "evaluate": _evaluate,
    "activate": _activate,
}


def chain_sheet(project: Project, payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    return _run_stage("sheet", project, payload, ctx)


def chain_gate(project: Project, payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    return _run_stage("gate", project, payload, ctx)


def chain_dataset(project: Project, payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    return _run_stage("dataset", project, payload, ctx)


def chain_train(project: Project, payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    return _run_stage("train", project, payload, ctx)


def chain_evaluate(project: Project, payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    return _run_stage("evaluate", project, payload, ctx)


def chain_activate(project: Project, payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    return _run_stage("activate", project, payload, ctx)
