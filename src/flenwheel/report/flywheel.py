"""The flywheel report: a character's rounds side by side — what each generated, what the filter removed and
why, who accepted what (the user or the auto policy), the dataset version it made, the coverage grid filling
in, and the comparison with the previous version (success rate with its Wilson interval and identity per
round as a plot, when measured; "not measurable" when not).

One self-contained HTML file, like the evaluation report (report/training.py): base64 thumbnails and plots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from flenwheel.evaluation.prompts import ANGLES, BODY_POSES, EXPRESSIONS
from flenwheel.evaluation.selection import SUCCESS_TARGET
from flenwheel.providers.tiny_model import TINY_NOTE
from flenwheel.report.render import render
from flenwheel.report.training import _figure, _png_uri, _thumbnail_uri, _to_png
from flenwheel.store.models import Asset, FlywheelRound
from flenwheel.store.project import Project, get_character

SHEET_LIMIT = 48  # thumbnails per round and side (kept / removed)


def write_flywheel_report(project: Project, character_name: str, target: Path) -> Path:
    """Write the report of every round of the character to `target` and return the path."""
    with project.db.session() as session:
        character = get_character(session, character_name)
        rows = session.scalars(
            select(FlywheelRound)
            .where(FlywheelRound.character_id == character.id)
            .order_by(FlywheelRound.number)
        ).all()
        rounds: list[dict[str, Any]] = [
            {"number": r.number, "status": r.status, "stage": r.stage, "record": dict(r.record)} for r in rows
        ]
        sha = {
            a.id: a.sha256 for a in session.scalars(select(Asset).where(Asset.id.in_(_candidate_ids(rounds))))
        }
    for item in rounds:
        item["sheet"] = _sheet(project, item["record"], sha)
        item["grid"] = _grid(item["record"])
        item["stopped"] = item["record"].get("stopped")
    measured = [
        r
        for r in rounds
        if (r["record"].get("comparison") or {}).get("verdict") not in (None, "not measurable")
    ]
    document = render(
        "flywheel.html",
        character=character_name,
        rounds=rounds,
        tiny_note=TINY_NOTE if any(r["record"].get("note") == TINY_NOTE for r in rounds) else None,
        plot=_png_uri(_plot(measured)) if measured else None,
        target=SUCCESS_TARGET,
        angles=list(ANGLES),
        expressions=list(EXPRESSIONS),
        poses=list(BODY_POSES),
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(document, encoding="utf-8")
    return target


def _candidate_ids(rounds: list[dict[str, Any]]) -> list[int]:
    ids: list[int] = []
    for item in rounds:
        filtered = item["record"].get("filter") or {}
        ids += [v["asset_id"] for v in filtered.get("queue", [])[:SHEET_LIMIT]]
        ids += [v["asset_id"] for v in filtered.get("removed_assets", [])[:SHEET_LIMIT]]
    return ids


def _sheet(project: Project, record: dict[str, Any], sha: dict[int, str]) -> dict[str, list[dict[str, str]]]:
    filtered = record.get("filter") or {}
    review = {d["asset_id"]: d for d in (record.get("review") or {}).get("decisions", [])}
    sheet: dict[str, list[dict[str, str]]] = {"kept": [], "removed": []}
    for side, key in (("kept", "queue"), ("removed", "removed_assets")):
        for verdict in filtered.get(key, [])[:SHEET_LIMIT]:
            if verdict["asset_id"] not in sha:
                continue
            decided = review.get(verdict["asset_id"]) or {}
            label = f" — {decided['label']} by {decided['by']}" if decided.get("by") else ""
            css = "pristine" if decided.get("label") == "pristine" else side
            sheet[side].append(
                {
                    "src": _thumbnail_uri(project, sha[verdict["asset_id"]]),
                    "what": f"asset {verdict['asset_id']}: {verdict['reason']}{label}",
                    "css": css,
                }
            )
    return sheet


def _grid(record: dict[str, Any]) -> dict[str, dict[str, str]]:
    """cell key → {"before": state, "after": state} for the coverage table."""
    dataset = record.get("dataset") or {}
    before = dataset.get("coverage_before") or record.get("coverage") or {}
    after = dataset.get("coverage_after") or before
    cells: dict[str, dict[str, str]] = {}
    for cell in before.get("cells", []):
        cells[cell["key"]] = {"before": cell["state"], "after": cell["state"], "count": str(cell["count"])}
    for cell in after.get("cells", []):
        cells.setdefault(cell["key"], {})
        cells[cell["key"]].update({"after": cell["state"], "count": str(cell["count"])})
    return cells


def _plot(rounds: list[dict[str, Any]]) -> bytes:
    """Success rate (with the 95 % Wilson interval) and identity similarity before/after each measured round."""
    figure = _figure(6.0, 3.0)
    rate, identity = figure.subplots(1, 2)
    xs = [r["number"] for r in rounds]
    for side, offset, colour in (("before", -0.1, "#888"), ("after", 0.1, "#176f2c")):
        summaries = [r["record"]["comparison"][side] for r in rounds]
        values = [s["success_rate"] for s in summaries]
        low = [v - s["interval"][0] for v, s in zip(values, summaries, strict=True)]
        high = [s["interval"][1] - v for v, s in zip(values, summaries, strict=True)]
        rate.errorbar([x + offset for x in xs], values, yerr=[low, high], fmt="o", color=colour, label=side)
        sims = [s["mean_similarity"] if s["mean_similarity"] is not None else float("nan") for s in summaries]
        identity.plot([x + offset for x in xs], sims, "o", color=colour, label=side)
    rate.axhline(SUCCESS_TARGET, color="#b00020", linestyle="--", linewidth=1)
    rate.set(title="success rate (95 % Wilson)", xlabel="round", ylim=(0, 1), xticks=xs)
    identity.set(title="identity similarity", xlabel="round", ylim=(0, 1), xticks=xs)
    rate.legend(fontsize=7)
    return _to_png(figure)
