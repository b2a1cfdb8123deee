"""Seed 003's success metrics, computed from what the store records (records.py reads it, figures.py counts),
and the same figures for Prometheus (prometheus.py). `compute_stats` is what `flenwheel stats` and GET /stats
show."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.orm import Session

from flenwheel.metrics.figures import (
    Stats,
    engine_figures,
    identity_figures,
    sla_verdicts,
    spend_figures,
)
from flenwheel.metrics.records import load_requests, load_spend, load_studio_images


def compute_stats(
    session: Session, since: datetime | None = None, character_ids: frozenset[int] | None = None
) -> Stats:
    """The metrics of the requests submitted since `since` (all time when None) for the given characters
    (every character when None). Spend against the caps covers each character's whole life."""
    requests = load_requests(session, since, character_ids)
    notes = []
    if any(r.model == "tiny" for r in requests):
        notes.append(
            "the built-in tiny model has random weights and runs on the CPU: its timings say nothing about "
            "a GPU engine, and its images have no face, so identity is not measurable on them"
        )
    return Stats(
        since=since,
        until=datetime.now(UTC),
        characters=tuple(sorted(character_ids)) if character_ids is not None else None,
        requests=len(requests),
        slas=tuple(sla_verdicts(requests)),
        engines=tuple(engine_figures(requests)),
        spend=tuple(spend_figures(load_spend(session, character_ids))),
        identity=tuple(identity_figures(load_studio_images(session, since, character_ids))),
        notes=tuple(notes),
    )


__all__ = ["Stats", "compute_stats"]
