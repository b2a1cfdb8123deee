"""The character's active LoRA: who or what set it, the user's `activate` / `deactivate`, and the words the
studio uses to say which mode it is in and why.

The LoRA itself lives in `Character.active_checkpoint_id` / `active_lora_strength`. Who set it is recorded
as an `ActivationRecord` under `TrainingRun.spec["studio_activation"]` of the checkpoint's run (no schema
change: the spec is a JSON column, and no trainer reads this key); an evaluation's own decision — activated
or only recommended — is stored under `Evaluation.config["decision"]` (evaluation/activation.py has the rule).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from flenwheel.domain import Frozen
from flenwheel.errors import InvalidInput
from flenwheel.evaluation.activation import ActivationDecision, CurrentMode
from flenwheel.evaluation.grid import check_strengths, strength_text
from flenwheel.evaluation.selection import CellSummary
from flenwheel.store.models import Character, Checkpoint, Evaluation, TrainingRun
from flenwheel.store.project import Project, get_character

ACTIVATION_KEY = "studio_activation"  # in TrainingRun.spec
DECISION_KEY = "decision"  # in Evaluation.config
DEFAULT_STRENGTH = 1.0
CHECKPOINT_FORMS = "a checkpoint id, runN:stepM, runN:latest, latest or recommended"
_LISTED = 12  # checkpoints named in an error before "…"


class ActivationRecord(Frozen):
    """Who last activated (or deactivated) a checkpoint of a run, and when."""

    action: Literal["activated", "deactivated"]
    checkpoint_id: int
    strength: float
    by: Literal["user", "evaluation"]
    evaluation_id: int | None = None
    success_rate: float | None = None
    at: str  # ISO 8601, UTC

    @property
    def who(self) -> str:
        if self.by == "user":
            return "the user"
        rate = "" if self.success_rate is None else f" (success {self.success_rate:.0%})"
        return f"evaluation {self.evaluation_id}{rate}"


class CheckpointChoice(Frozen):
    """A checkpoint of the character, where it sits in training, and its file (relative to the project)."""

    id: int
    run_id: int
    step: int
    epoch: int | None
    path: str

    @property
    def label(self) -> str:
        epoch = f", epoch {self.epoch}" if self.epoch is not None else ""
        return f"checkpoint {self.id} (run {self.run_id}, step {self.step}{epoch})"


class ActivationOutcome(Frozen):
    """What `flenwheel activate` / `deactivate` did: the LoRA now active (None: identity-reference mode),
    the one it replaced, and the studio's mode in words."""

    character: str
    active: CheckpointChoice | None
    strength: float | None
    previous: CheckpointChoice | None
    previous_strength: float | None
    strength_source: str | None  # why this strength, when the user gave none
    mode: Literal["lora", "identity_reference"]
    mode_reason: str


# -- the user's choice ---------------------------------------------------------------------------------
def activate(
    project: Project, character_name: str, checkpoint: str | int, strength: float | None = None
) -> ActivationOutcome:
    """Make a checkpoint the character's active LoRA as the user's own decision (recorded as "the user").

    `checkpoint`: an id, `runN:stepM`, `runN:latest`, `latest` (the newest run's last checkpoint) or
    `recommended` (the newest evaluation's pick). `strength` defaults to the evaluation's strength when the
    checkpoint is the newest evaluation's pick, else 1.0; it must be above 0 and at most 4 (LoraRef's range).
    """
    with project.db.session() as session:
        character = get_character(session, character_name)
        choice = resolve_checkpoint(session, character, checkpoint)
        source = None
        if strength is None:
            strength, source = _default_strength(session, character, choice)
        (strength,) = _check_strength(strength)
        if not (project.root / choice.path).is_file():
            raise InvalidInput(
                f"the file of {choice.label}, {choice.path}, is missing: restore it, or choose another — "
                f"{_choices_text(session, character)}"
            )
        previous = _active_choice(session, character)
        previous_strength = character.active_lora_strength
        record = ActivationRecord(
            action="activated", checkpoint_id=choice.id, strength=strength, by="user", at=_now()
        )
        apply_activation(session, character, choice.id, strength, record)
        reason = mode_reason(session, character)
    return ActivationOutcome(
        character=character_name,
        active=choice,
        strength=strength,
        previous=previous,
        previous_strength=previous_strength,
        strength_source=source,
        mode="lora",
        mode_reason=reason,
    )


def deactivate(project: Project, character_name: str) -> ActivationOutcome:
    """The user turns the LoRA off: the studio draws in identity-reference mode until one is activated."""
    with project.db.session() as session:
        character = get_character(session, character_name)
        previous = _active_choice(session, character)
        previous_strength = character.active_lora_strength
        if previous is not None:
            record = ActivationRecord(
                action="deactivated",
                checkpoint_id=previous.id,
                strength=previous_strength if previous_strength is not None else DEFAULT_STRENGTH,
                by="user",
                at=_now(),
            )
            _write_record(session, previous.run_id, record)
        character.active_checkpoint_id = None
        character.active_lora_strength = None
        reason = mode_reason(session, character)
    return ActivationOutcome(
        character=character_name,
        active=None,
        strength=None,
        previous=previous,
        previous_strength=previous_strength,
        strength_source=None,
        mode="identity_reference",
        mode_reason=reason,
    )


def resolve_checkpoint(session: Session, character: Character, ref: str | int) -> CheckpointChoice:
    """The character's checkpoint named by `ref` (see `activate`); the error lists the valid choices."""
    text = str(ref).strip().lower()
    choices = checkpoint_choices(session, character)
    found: CheckpointChoice | None = None
    if text.isdigit():
        found = next((c for c in choices if c.id == int(text)), None)
    elif text == "latest":
        newest = max((c.run_id for c in choices), default=None)
        found = _last([c for c in choices if c.run_id == newest])
    elif text == "recommended":
        decision = latest_decision(session, character)
        if decision is None:
            raise InvalidInput(
                f"no evaluation of {character.name!r} has recommended a checkpoint yet: run `flenwheel "
                f"evaluate {character.name}`, or name one — {_choices_text(session, character, choices)}"
            )
        found = next((c for c in choices if c.id == decision[1].checkpoint_id), None)
    elif match := re.fullmatch(r"run(\d+):(?:step(\d+)|(latest))", text):
        in_run = [c for c in choices if c.run_id == int(match.group(1))]
        found = (
            _last(in_run)
            if match.group(3)
            else next((c for c in in_run if c.step == int(match.group(2))), None)
        )
    if found is None:
        raise InvalidInput(
            f"{str(ref)!r} names no checkpoint of {character.name!r}: give {CHECKPOINT_FORMS} — "
            f"{_choices_text(session, character, choices)}"
        )
    return found


def checkpoint_choices(session: Session, character: Character) -> list[CheckpointChoice]:
    """Every checkpoint of the character's runs, oldest run first, in training order."""
    rows = session.execute(
        select(Checkpoint)
        .join(TrainingRun, TrainingRun.id == Checkpoint.run_id)
        .where(TrainingRun.character_id == character.id)
        .order_by(TrainingRun.id, Checkpoint.step)
    ).scalars()
    return [CheckpointChoice(id=c.id, run_id=c.run_id, step=c.step, epoch=c.epoch, path=c.path) for c in rows]


def _choices_text(
    session: Session, character: Character, choices: Sequence[CheckpointChoice] | None = None
) -> str:
    choices = checkpoint_choices(session, character) if choices is None else choices
    if not choices:
        return f"{character.name!r} has no checkpoints yet: train one with `flenwheel train {character.name}`"
    listed = ", ".join(f"{c.id} (run{c.run_id}:step{c.step})" for c in choices[-_LISTED:])
    more = f"… and {len(choices) - _LISTED} older, " if len(choices) > _LISTED else ""
    return f"{character.name!r}'s checkpoints: {more}{listed}"


def _last(choices: Sequence[CheckpointChoice]) -> CheckpointChoice | None:
    return max(choices, key=lambda c: c.step, default=None)


def _check_strength(strength: float) -> tuple[float, ...]:
    try:
        return check_strengths([strength])
    except (TypeError, ValueError):
        raise InvalidInput(f"strength {strength!r}: give a number above 0 and at most 4") from None


def _default_strength(session: Session, character: Character, choice: CheckpointChoice) -> tuple[float, str]:
    decision = latest_decision(session, character)
    if decision is not None and decision[1].checkpoint_id == choice.id:
        return decision[1].strength, f"the strength evaluation {decision[0]} recommended"
    return DEFAULT_STRENGTH, "the default strength (no evaluation recommended this checkpoint)"


def _active_choice(session: Session, character: Character) -> CheckpointChoice | None:
    if character.active_checkpoint_id is None:
        return None
    checkpoint = session.get(Checkpoint, character.active_checkpoint_id)
    if checkpoint is None:
        return None
    return CheckpointChoice(
        id=checkpoint.id,
        run_id=checkpoint.run_id,
        step=checkpoint.step,
        epoch=checkpoint.epoch,
        path=checkpoint.path,
    )


# -- records ---------------------------------------------------------------------------------------------
def apply_activation(
    session: Session, character: Character, checkpoint_id: int, strength: float, record: ActivationRecord
) -> None:
    """Set the character's active LoRA and record who did it, in the caller's transaction."""
    checkpoint = session.get_one(Checkpoint, checkpoint_id)
    character.active_checkpoint_id = checkpoint_id
    character.active_lora_strength = strength
    _write_record(session, checkpoint.run_id, record)


def _write_record(session: Session, run_id: int, record: ActivationRecord) -> None:
    run = session.get_one(TrainingRun, run_id)
    run.spec = {
        **(run.spec or {}),
        ACTIVATION_KEY: record.model_dump(mode="json"),
    }  # a new dict: JSON columns
    # only notice assignment


def _records(session: Session, character: Character) -> list[ActivationRecord]:
    specs = session.scalars(select(TrainingRun.spec).where(TrainingRun.character_id == character.id))
    records = []
    for spec in specs:
        try:
            records.append(ActivationRecord.model_validate((spec or {})[ACTIVATION_KEY]))
        except (KeyError, ValidationError):
            continue
    return records


def active_record(session: Session, character: Character) -> ActivationRecord | None:
    """The record of the activation that set the character's current LoRA, if it was recorded."""
    for record in _records(session, character):
        if (
            record.action == "activated"
            and record.checkpoint_id == character.active_checkpoint_id
            and character.active_lora_strength is not None
            and round(record.strength, 4) == round(character.active_lora_strength, 4)
        ):
            return record
    return None


def decision_record(decision: ActivationDecision, evaluation_id: int, run_id: int) -> dict[str, Any]:
    """The evaluation's decision as stored in `Evaluation.config["decision"]`."""
    return {
        **decision.model_dump(mode="json"),
        "summary": decision.summary,
        "evaluation_id": evaluation_id,
        "run_id": run_id,
        "at": _now(),
    }


def latest_decision(session: Session, character: Character) -> tuple[int, ActivationDecision, str] | None:
    """The newest evaluation decision of the character: (evaluation id, decision, when)."""
    found: tuple[int, ActivationDecision, str] | None = None
    rows = session.execute(
        select(Evaluation.id, Evaluation.config)
        .join(TrainingRun, TrainingRun.id == Evaluation.run_id)
        .where(TrainingRun.character_id == character.id, Evaluation.status == "succeeded")
    ).all()
    for evaluation_id, config in rows:
        stored = (config or {}).get(DECISION_KEY)
        if not isinstance(stored, dict):
            continue
        try:
            decision = ActivationDecision.model_validate(
                {k: v for k, v in stored.items() if k in ActivationDecision.model_fields}
            )
        except ValidationError:
            continue
        at = str(stored.get("at", ""))
        if found is None or at > found[2]:
            found = (evaluation_id, decision, at)
    return found


def current_mode(
    session: Session,
    character: Character,
    evaluation_id: int,
    cells: Sequence[CellSummary],
    measured: bool,
) -> CurrentMode:
    """The studio's mode before an evaluation decides, with the active LoRA's success rate on the same
    measure: its cell in this evaluation when it was drawn here, else in the newest evaluation that drew it
    and found faces. Identity-reference mode has no measure (nothing evaluates it yet)."""
    if character.active_checkpoint_id is None:
        return CurrentMode(mode="identity_reference")
    strength = round(character.active_lora_strength if character.active_lora_strength is not None else 1.0, 4)
    key = (character.active_checkpoint_id, strength)
    base = {"mode": "lora", "checkpoint_id": key[0], "strength": strength}
    if measured:
        for cell in cells:
            if (cell.checkpoint_id, cell.strength) == key and cell.images:
                return CurrentMode(
                    **base,
                    success_rate=cell.success_rate,
                    measured_by=f"this evaluation, {cell.images} images",
                )
    rows = session.execute(
        select(Evaluation.id, Evaluation.summary)
        .join(TrainingRun, TrainingRun.id == Evaluation.run_id)
        .where(
            TrainingRun.character_id == character.id,
            Evaluation.status == "succeeded",
            Evaluation.id != evaluation_id,
        )
        .order_by(Evaluation.id.desc())
    ).all()
    for other_id, summary in rows:
        others = [CellSummary.model_validate(row) for row in summary or []]
        if not any(c.faces for c in others):
            continue  # nothing was measured there
        for cell in others:
            if (cell.checkpoint_id, round(cell.strength, 4)) == key and cell.images:
                return CurrentMode(
                    **base,
                    success_rate=cell.success_rate,
                    measured_by=f"evaluation {other_id}, {cell.images} images",
                )
    return CurrentMode(**base)


# -- the studio's words ------------------------------------------------------------------------------------
def mode_reason(session: Session, character: Character) -> str:
    """Which mode the studio draws in and why, from the active LoRA and the records of who set it.

    e.g. "lora: checkpoint 5 (run 2, step 200) at strength 0.8, activated by the user", or
    "identity_reference: no LoRA is active (run 3's pick was not measurable: recommended checkpoint 2 at
    strength 0.8, not activated)"."""
    active = _active_choice(session, character)
    if active is not None:
        strength = strength_text(character.active_lora_strength or DEFAULT_STRENGTH)
        record = active_record(session, character)
        who = f"activated by {record.who}" if record else "active (who activated it was not recorded)"
        return f"lora: {active.label} at strength {strength}, {who}"
    return f"identity_reference: no LoRA is active {_why_none(session, character)}"


def _why_none(session: Session, character: Character) -> str:
    decision = latest_decision(session, character)
    deactivated = max(
        (r for r in _records(session, character) if r.action == "deactivated"),
        key=lambda r: r.at,
        default=None,
    )
    name = character.name
    if deactivated is not None and (decision is None or deactivated.at > decision[2]):
        return (
            f"(the user deactivated checkpoint {deactivated.checkpoint_id} at strength "
            f"{strength_text(deactivated.strength)}; `flenwheel activate {name} CHECKPOINT` turns one on)"
        )
    if decision is None:
        return (
            f"yet (train and evaluate one with `flenwheel train {name}` and `flenwheel evaluate {name}`, "
            f"or choose one with `flenwheel activate {name} CHECKPOINT`)"
        )
    evaluation_id, chosen, _at = decision
    run_id = session.scalar(select(Evaluation.run_id).where(Evaluation.id == evaluation_id))
    pick = f"checkpoint {chosen.checkpoint_id} at strength {strength_text(chosen.strength)}"
    how = f"`flenwheel activate {name} {chosen.checkpoint_id} --strength {strength_text(chosen.strength)}`"
    if chosen.activated:  # it was active once, and something else turned it off since
        return f"(evaluation {evaluation_id} of run {run_id} activated {pick}; it is no longer active)"
    if chosen.rule == "not_measured":
        return (
            f"(run {run_id}'s pick was not measurable: recommended {pick}, not activated; use it with {how})"
        )
    return (
        f"(run {run_id}'s pick, {pick} at {chosen.success_rate:.0%} success, was recommended, not activated: "
        f"{chosen.summary.split('(', 1)[-1].rstrip(')')}; use it with {how})"
    )


def _now() -> str:
    return datetime.now(UTC).isoformat()
