"""The evaluation report of a training run: the pick and why, whether it was activated or only recommended,
contact sheet, heatmap, loss curve, advice.

One self-contained HTML file: thumbnails are small base64 JPEGs and the plots are base64 PNGs (matplotlib,
Agg canvas, no display needed), so the page can be mailed or attached to an issue as it is.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select

from flenwheel.evaluation.advice import Advice
from flenwheel.evaluation.grid import strength_text
from flenwheel.evaluation.prompts import BODY_POSE_TARGETS, pose_target
from flenwheel.evaluation.scoring import ADHERENCE_NOT_MEASURED, body_poses, pose_status
from flenwheel.evaluation.selection import SUCCESS_TARGET, CellSummary, SampleRecord, pose_success
from flenwheel.images import open_stored
from flenwheel.providers.tiny_model import TINY_MODEL_ID, TINY_NOTE
from flenwheel.report.render import render
from flenwheel.store.models import Asset, Character, DatasetVersion, Evaluation, EvaluationSample, TrainingRun
from flenwheel.store.project import Project

THUMBNAIL_SIDE = 72


def write_evaluation_report(project: Project, evaluation_id: int, target: Path) -> Path:
    """Write the report of one evaluation to `target` (folders made as needed) and return the path."""
    with project.db.session() as session:
        evaluation = session.get_one(Evaluation, evaluation_id)
        run = session.get_one(TrainingRun, evaluation.run_id)
        character = session.get_one(Character, run.character_id)
        version = session.get_one(DatasetVersion, run.dataset_version_id)
        labels = {c.id: _checkpoint_label(c.step, c.epoch) for c in run.checkpoints}
        rows = session.execute(
            select(EvaluationSample, Asset.sha256, Asset.model)
            .outerjoin(Asset, Asset.id == EvaluationSample.asset_id)
            .where(EvaluationSample.evaluation_id == evaluation_id)
            .order_by(EvaluationSample.id)
        ).all()
        config, reason, status = dict(evaluation.config), evaluation.reason, evaluation.status
        cells = [CellSummary.model_validate(row) for row in evaluation.summary]
        advice = [Advice.model_validate(item) for item in evaluation.advice]
        selected = (evaluation.selected_checkpoint_id, evaluation.selected_strength)
        losses = [(float(step), float(loss)) for step, loss in run.losses]
        checkpoint_steps = [(c.step, c.id) for c in run.checkpoints]
        title = f"{character.name} — run {run.id} ({run.trainer}, dataset {version.label})"
        allow_nsfw = character.nsfw
        character_name = character.name
        bodies = body_poses(
            project,
            session,
            [row.asset_id for row, *_ in rows if row.asset_id and pose_target(row.prompt_key)],
        )
    threshold = float(config.get("identity_threshold", project.settings.identity_threshold))
    samples = [
        (
            SampleRecord(
                checkpoint_id=row.checkpoint_id,
                strength=round(row.strength, 4),
                prompt_key=row.prompt_key,
                asset_id=row.asset_id,
                face_found=row.face_found,
                identity_distance=row.identity_distance,
                near_copy=row.near_copy,
                nsfw_score=row.nsfw_score,
                adherence=row.adherence,
                pose=pose_status(row.prompt_key, bodies.get(row.asset_id) if row.asset_id else None),
            ),
            sha256,
        )
        for row, sha256, _model in rows
    ]
    tiny = any(model == TINY_MODEL_ID for _row, _sha, model in rows)
    faces = sum(c.faces for c in cells)
    images = sum(c.images for c in cells)

    strengths = sorted({c.strength for c in cells})
    order = sorted({(c.step, c.checkpoint_id) for c in cells})
    document = render(
        "evaluation.html",
        title=title,
        images=images,
        faces=faces,
        tiny_note=TINY_NOTE if tiny else None,
        status=status,
        reason=reason,
        decision=_decision(config.get("decision")),
        character_name=character_name,
        config=config,
        prompts=config.get("prompts", []),
        threshold=threshold,
        allow_nsfw=allow_nsfw,
        success_target=SUCCESS_TARGET,
        adherence_note=ADHERENCE_NOT_MEASURED,
        heatmap=_png_uri(_heatmap_png(cells, order, strengths, labels, selected, threshold)),
        loss_plot=_png_uri(_loss_png(losses, checkpoint_steps, selected[0])) if losses else None,
        advice=advice,
        cells=cells,
        poses=pose_success(
            [sample for sample, _sha in samples],
            {f"full_body-{key}": target.description for key, target in BODY_POSE_TARGETS.items()},
        ),
        order=order,
        strengths=strengths,
        labels=labels,
        selected=selected,
        sheet=_contact_sheet(project, samples, threshold, allow_nsfw),
        strength_text=strength_text,
        number=_number,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(document, encoding="utf-8")
    return target


def _decision(stored: Any) -> dict[str, Any] | None:
    """The evaluation's activation decision (pipeline/activation.py's record), ready for the template."""
    if not isinstance(stored, dict) or "summary" not in stored:
        return None
    summary = str(stored["summary"])
    return {
        "activated": bool(stored.get("activated")),
        "headline": summary[:1].upper() + summary[1:],
        "reason": str(stored.get("reason", "")),
        "checkpoint_id": stored.get("checkpoint_id"),
        "strength": strength_text(float(stored.get("strength", 1.0))),
        "offer": stored.get("rule") != "already_active" and not stored.get("activated"),
    }


def _checkpoint_label(step: int, epoch: int | None) -> str:
    return f"step {step}" + (f" (epoch {epoch})" if epoch is not None else "")


def _thumbnail_uri(project: Project, sha256: str, side: int = THUMBNAIL_SIDE) -> str:
    image = open_stored(project.blobs.get(sha256)).convert("RGB")
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _sample_class(sample: SampleRecord, threshold: float, allow_nsfw: bool) -> tuple[str, str]:
    if sample.near_copy:
        return "copy", "near copy of a training image"
    if sample.nsfw and not allow_nsfw:
        return "nsfw", f"flagged NSFW ({sample.nsfw_score:.2f})"
    if not sample.face_found:
        return "noface", "no face found"
    if sample.success(threshold, allow_nsfw):
        return "ok", f"the character, distance {sample.identity_distance:.2f}"
    return "other", f"another face, distance {sample.identity_distance or 0:.2f}"


def _contact_sheet(
    project: Project,
    samples: Sequence[tuple[SampleRecord, str | None]],
    threshold: float,
    allow_nsfw: bool,
) -> dict[tuple[int, float], list[dict[str, str]]]:
    """The thumbnails of each (checkpoint, strength) cell, with their verdict for the border colour."""
    by_cell: dict[tuple[int, float], list[dict[str, str]]] = {}
    for sample, sha256 in samples:
        if sha256 is None:
            continue
        css, what = _sample_class(sample, threshold, allow_nsfw)
        tile = {"css": css, "what": what, "prompt": sample.prompt_key, "src": _thumbnail_uri(project, sha256)}
        by_cell.setdefault((sample.checkpoint_id, sample.strength), []).append(tile)
    return by_cell


def _number(value: float | None, spread: float | None = None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" + (f" ± {spread:.2f}" if spread is not None else "")


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _to_png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")  # a bare Figure renders on the Agg canvas: no display, no pyplot
    return buffer.getvalue()


def _heatmap_png(
    cells: Sequence[CellSummary],
    order: Sequence[tuple[int, int]],
    strengths: Sequence[float],
    labels: dict[int, str],
    selected: tuple[int | None, float | None],
    threshold: float,
) -> bytes:
    import numpy as np
    from matplotlib.colors import Normalize, TwoSlopeNorm
    from matplotlib.patches import Rectangle

    index = {(c.checkpoint_id, c.strength): c for c in cells}
    rows = [checkpoint_id for _step, checkpoint_id in order]
    figure = _figure(4.0 + 1.4 * len(strengths), 1.4 + 0.45 * len(rows))
    axes = figure.subplots(1, 2)
    panels = (
        ("success rate (target ≥ 80 %)", lambda c: c.success_rate, lambda v: f"{v:.0%}", Normalize(0.0, 1.0)),
        # Green above the match line (similarity 1 − threshold), red below it.
        (
            "mean identity similarity",
            lambda c: c.mean_similarity,
            lambda v: f"{v:.2f}",
            TwoSlopeNorm(
                vcenter=1.0 - threshold, vmin=max(0.0, 0.65 - threshold), vmax=min(1.0, 1.3 - threshold)
            ),
        ),
    )
    for ax, (title, value_of, text_of, norm) in zip(axes, panels, strict=True):
        grid = np.full((len(rows), len(strengths)), np.nan)
        for i, checkpoint_id in enumerate(rows):
            for j, strength in enumerate(strengths):
                cell = index.get((checkpoint_id, strength))
                value = value_of(cell) if cell is not None else None
                if value is not None:
                    grid[i, j] = value
                ax.text(
                    j, i, "n/a" if value is None else text_of(value), ha="center", va="center", fontsize=9
                )
                if selected == (checkpoint_id, strength):
                    ax.add_patch(
                        Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2.5)
                    )
        image = ax.imshow(grid, cmap="RdYlGn", norm=norm, aspect="auto")
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(len(strengths)), [f"{strength_text(s)}" for s in strengths])
        ax.set_xlabel("LoRA strength")
        ax.set_yticks(range(len(rows)), [labels.get(r, str(r)) for r in rows], fontsize=8)
        figure.colorbar(image, ax=ax, shrink=0.8)
    return _to_png(figure)


def _loss_png(
    losses: Sequence[tuple[float, float]], checkpoints: Sequence[tuple[int, int]], selected_id: int | None
) -> bytes:
    import numpy as np

    steps = np.array([step for step, _ in losses])
    values = np.array([loss for _, loss in losses])
    figure = _figure(8.0, 3.2)
    ax = figure.subplots()
    ax.plot(steps, values, color="#9aa7b8", linewidth=0.8, label="loss")
    window = max(1, len(values) // 20)
    if window > 1:
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, color="#1f4e8c", linewidth=1.8, label=f"mean of {window} steps")
    for step, checkpoint_id in checkpoints:
        chosen = checkpoint_id == selected_id
        ax.axvline(
            step,
            color="#176f2c" if chosen else "#bbbbbb",
            linestyle="-" if chosen else ":",
            linewidth=2 if chosen else 1,
            label="selected checkpoint" if chosen else None,
        )
        ax.annotate(
            f"step {step}",
            (step, 1.0),
            xycoords=("data", "axes fraction"),
            rotation=90,
            fontsize=7,
            ha="right",
            va="top",
            color="#176f2c" if chosen else "#777777",
        )
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.legend(loc="lower left", fontsize=8)
    return _to_png(figure)
