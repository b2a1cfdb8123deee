"""Whether an evaluation's pick becomes the character's active LoRA, or is only recommended — and why.

The rule (seed 001, model card "Benchmark Testing": "Track success rate (what % generate correctly on first
try). Target: 80%+ success rate for v1.0 release"):

1. A pick with nothing measured (no face in any evaluation image — always so on the tiny model) is
   *recommended*, never activated: the tie rule chose it, not evidence.
2. A measured pick that meets the 80 % target activates, unless the studio's current LoRA measured a higher
   success rate (a worse LoRA never replaces a better one).
3. A measured pick below 80 % activates only if it beats the studio's current mode on the same measure
   (success rate on the model-card prompts): the active LoRA's measured rate, or identity-reference mode's
   when no LoRA is active. When the current mode was never measured — identity-reference mode never is
   today — a sub-80 % pick is only recommended.
4. A pick that already is the active LoRA at the same strength is left as it is.

Only the decision lives here (no I/O); pipeline/activation.py finds the current mode's measure and applies it.
"""

from __future__ import annotations

from typing import Literal

from flenwheel.domain import Frozen
from flenwheel.evaluation.grid import strength_text
from flenwheel.evaluation.selection import SUCCESS_TARGET, Selection

Rule = Literal[
    "not_measured",  # rule 1
    "meets_target",  # rule 2, activated
    "current_measured_higher",  # rule 2, not activated
    "beats_current",  # rule 3, activated
    "current_not_measured",  # rule 3, not activated
    "does_not_beat_current",  # rule 3, not activated
    "already_active",  # rule 4
]


class CurrentMode(Frozen):
    """The studio's mode before the decision, and its success rate on the same measure if one exists."""

    mode: Literal["lora", "identity_reference"]
    checkpoint_id: int | None = None
    strength: float | None = None
    success_rate: float | None = None  # None: never measured
    measured_by: str | None = None  # where the rate comes from, e.g. "evaluation 3"

    @property
    def label(self) -> str:
        if self.mode == "identity_reference":
            return "identity-reference mode (no LoRA is active)"
        return f"the active LoRA (checkpoint {self.checkpoint_id} at strength {strength_text(self.strength or 0)})"


class ActivationDecision(Frozen):
    """What an evaluation did with its pick: `activated`, or only recommended; `rule` and `reason` say why."""

    activated: bool
    rule: Rule
    checkpoint_id: int
    strength: float
    success_rate: float
    measured: bool
    reason: str
    current: CurrentMode

    @property
    def summary(self) -> str:
        """One line: "activated (meets the 80 % target)" / "recommended, not activated (not measurable)"."""
        why = {
            "not_measured": "not measurable",
            "meets_target": f"meets the {SUCCESS_TARGET:.0%} target",
            "current_measured_higher": "the current LoRA measured higher",
            "beats_current": "below the target, but beats the current mode",
            "current_not_measured": f"below {SUCCESS_TARGET:.0%} and the current mode was never measured",
            "does_not_beat_current": "does not beat the current mode",
            "already_active": "already the active LoRA",
        }[self.rule]
        if self.rule == "already_active":
            return f"kept active ({why})"
        return f"{'activated' if self.activated else 'recommended, not activated'} ({why})"


def decide_activation(selection: Selection, current: CurrentMode) -> ActivationDecision:
    """Apply the module's rule to an evaluation's pick; the reason quotes the numbers it compared."""
    pick = f"checkpoint {selection.checkpoint_id} at strength {strength_text(selection.strength)}"
    rate = f"{selection.success_rate:.0%}"
    current_rate = None if current.success_rate is None else f"{current.success_rate:.0%}"
    source = f" ({current.measured_by})" if current.measured_by else ""
    activated: bool
    rule: Rule
    if (current.checkpoint_id, current.strength) == (selection.checkpoint_id, selection.strength):
        activated, rule = False, "already_active"
        reason = f"{pick} already is the active LoRA; it stays active."
    elif not selection.measured:
        activated, rule = False, "not_measured"
        reason = (
            f"{pick} is recommended, not activated: no face was found in any evaluation image, so its "
            f"success rate could not be measured (the pick followed the tie rule only). The studio stays in "
            f"{current.label}."
        )
    elif selection.success_rate >= SUCCESS_TARGET:
        if current.success_rate is not None and current.success_rate > selection.success_rate:
            activated, rule = False, "current_measured_higher"
            reason = (
                f"{pick} is recommended, not activated: it meets the {SUCCESS_TARGET:.0%} target ({rate}), "
                f"but {current.label} measured higher ({current_rate}{source})."
            )
        else:
            activated, rule = True, "meets_target"
            reason = f"{pick} was activated: {rate} success meets the {SUCCESS_TARGET:.0%} target."
    elif current.success_rate is None:
        activated, rule = False, "current_not_measured"
        reason = (
            f"{pick} is recommended, not activated: {rate} success is below the {SUCCESS_TARGET:.0%} target, "
            f"and {current.label} has no measured success rate to compare it with."
        )
    elif selection.success_rate > current.success_rate:
        activated, rule = True, "beats_current"
        reason = (
            f"{pick} was activated: {rate} success is below the {SUCCESS_TARGET:.0%} target but beats "
            f"{current.label} ({current_rate}{source})."
        )
    else:
        activated, rule = False, "does_not_beat_current"
        reason = (
            f"{pick} is recommended, not activated: {rate} success is below the {SUCCESS_TARGET:.0%} target "
            f"and does not beat {current.label} ({current_rate}{source})."
        )
    return ActivationDecision(
        activated=activated,
        rule=rule,
        checkpoint_id=selection.checkpoint_id,
        strength=selection.strength,
        success_rate=selection.success_rate,
        measured=selection.measured,
        reason=reason,
        current=current,
    )
