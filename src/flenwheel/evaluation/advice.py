"""Troubleshooting advice (seed 002 "Troubleshooting flow"), each item tied to a measured symptom.

Nothing here guesses: every item quotes the numbers that triggered it. With no face in any image (the
built-in tiny model) the only identity advice is that identity cannot be measured.
"""

from __future__ import annotations

from collections.abc import Sequence

from flenwheel.domain import Frozen
from flenwheel.evaluation.grid import strength_text
from flenwheel.evaluation.selection import SUCCESS_TARGET, CellSummary, SampleRecord, Selection

# A drop at least this large from the peak checkpoint to the last one reads as overfitting.
SUCCESS_DROP = 0.15
SIMILARITY_DROP = 0.03
UNDERFIT_SUCCESS = 0.5
INCONSISTENT_SPREAD = 0.08
UNDERFIT_LR = 3e-4  # seed 002: "Underfit → ↑ LR to 0.0003"


class Advice(Frozen):
    """One symptom, the evidence for it, and what to do (seed 002)."""

    code: str  # no_faces | memorised | overfit | underfit | still_improving | undertrained | ...
    symptom: str
    evidence: str
    remedy: str


def troubleshoot(
    cells: Sequence[CellSummary],
    samples: Sequence[SampleRecord],
    selection: Selection,
    threshold: float,
    learning_rate: float | None = None,
    dataset_gaps: Sequence[str] = (),
    character_nsfw: bool = False,
) -> list[Advice]:
    """Advice for what the grid measured; `dataset_gaps` are the dataset version's unmet targets."""
    advice: list[Advice] = []
    images = sum(c.images for c in cells)
    faces = sum(c.faces for c in cells)
    flagged = sum(c.nsfw_flags for c in cells)
    if flagged and not character_nsfw:
        worst = max(cells, key=lambda c: c.nsfw_flags)
        advice.append(
            Advice(
                code="nsfw",
                symptom="explicit images from SFW prompts",
                evidence=f"{flagged} of {images} images were flagged NSFW (most: {worst.nsfw_flags} at "
                f"{worst.label}, strength {strength_text(worst.strength)}); they count as failures",
                remedy="check the dataset for explicit images and remove them, then retrain; meanwhile add "
                "'nsfw, nude' to the negative prompt",
            )
        )
    if faces == 0:
        advice.append(
            Advice(
                code="no_faces",
                symptom="the model draws no faces",
                evidence=f"0 of {images} images show a face, at every checkpoint and strength",
                remedy="identity cannot be measured. With the built-in tiny model (random weights) this is "
                "expected. With a real model: check that the base model is the one the LoRA was trained on, "
                "that training finished, and look at the contact sheet",
            )
        )
        return advice

    copies = sum(c.near_copies for c in cells)
    if copies:
        worst = max(cells, key=lambda c: (c.near_copies, -c.step))
        advice.append(
            Advice(
                code="memorised",
                symptom="near copies of training images (memorised)",
                evidence=f"{copies} of {images} images are near copies of a training image (most: "
                f"{worst.near_copies} at {worst.label}, strength {strength_text(worst.strength)})",
                remedy="overfit: use an earlier checkpoint; next time add variety (backgrounds, poses, "
                "lighting), lower the repeats or the rank (8–12)",
            )
        )

    per_checkpoint = _best_per_checkpoint(cells)
    advice += _trend_advice(per_checkpoint, learning_rate)

    best_rate = max(c.success_rate for c in cells)
    if best_rate < UNDERFIT_SUCCESS and not any(a.code == "overfit" for a in advice):
        distances = [c.mean_distance for c in cells if c.mean_distance is not None]
        mean_distance = f"; mean identity distance {min(distances):.2f} at best" if distances else ""
        gaps = f" Dataset targets not met: {'; '.join(dataset_gaps)}." if dataset_gaps else ""
        advice.append(
            Advice(
                code="underfit",
                symptom="low identity everywhere (underfit or weak dataset)",
                evidence=f"the best cell reaches {best_rate:.0%} success (threshold distance "
                f"{threshold:.2f}){mean_distance}",
                remedy=f"train longer (+2 epochs) or raise the learning rate ({_raised_lr(learning_rate)}); "
                f"check the dataset composition — seed 002 wants 30+ consistent portraits.{gaps}",
            )
        )

    undertrained = _undertrained(cells, selection)
    if undertrained is not None:
        advice.append(undertrained)

    chosen = next(
        c for c in cells if c.checkpoint_id == selection.checkpoint_id and c.strength == selection.strength
    )
    if chosen.spread is not None and chosen.spread >= INCONSISTENT_SPREAD:
        advice.append(
            Advice(
                code="inconsistent",
                symptom="face inconsistency",
                evidence=f"identity similarity varies by ± {chosen.spread:.2f} across prompts at the chosen "
                "checkpoint",
                remedy="add consistent portraits (30+) and regenerate or drop the odd ones out (seed 002)",
            )
        )

    if chosen.meets_target:
        advice.append(
            Advice(
                code="ready",
                symptom="meets the model-card target",
                evidence=f"{chosen.success_rate:.0%} success at {chosen.label}, strength {strength_text(chosen.strength)}",
                remedy="use it: it is now the character's active LoRA, so generation can run in LoRA mode "
                "and the flywheel can start making synthetic images",
            )
        )
    elif best_rate >= UNDERFIT_SUCCESS:
        failing = _failing_prompts(samples, selection, threshold, character_nsfw)
        advice.append(
            Advice(
                code="below_target",
                symptom=f"below the {SUCCESS_TARGET:.0%} first-try target",
                evidence=f"{chosen.success_rate:.0%} at the chosen checkpoint; failing prompts: "
                f"{', '.join(failing) or 'none'}",
                remedy="add training images for the failing angles, expressions and poses (seed 001 step 1.1: "
                "variety in angles and expressions), then retrain",
            )
        )
    return advice


def _best_per_checkpoint(cells: Sequence[CellSummary]) -> list[CellSummary]:
    """For each checkpoint (training order), its best strength's cell."""
    best: dict[int, CellSummary] = {}
    for cell in cells:
        current = best.get(cell.checkpoint_id)
        if current is None or cell.joint_score > current.joint_score:
            best[cell.checkpoint_id] = cell
    return sorted(best.values(), key=lambda c: (c.step, c.checkpoint_id))


def _trend_advice(per_checkpoint: list[CellSummary], learning_rate: float | None) -> list[Advice]:
    if len(per_checkpoint) < 2:
        return []
    peak_index = max(range(len(per_checkpoint)), key=lambda i: (per_checkpoint[i].joint_score, -i))
    peak, last, first = per_checkpoint[peak_index], per_checkpoint[-1], per_checkpoint[0]
    drop_success = peak.success_rate - last.success_rate
    drop_similarity = (
        peak.mean_similarity - last.mean_similarity
        if peak.mean_similarity is not None and last.mean_similarity is not None
        else 0.0
    )
    if peak_index < len(per_checkpoint) - 1 and (
        drop_success >= SUCCESS_DROP or drop_similarity >= SIMILARITY_DROP
    ):
        return [
            Advice(
                code="overfit",
                symptom=f"identity falls after {peak.label}",
                evidence=f"{peak.label}: {peak.success_rate:.0%} success, similarity "
                f"{_num(peak.mean_similarity)}; {last.label}: {last.success_rate:.0%}, "
                f"{_num(last.mean_similarity)}",
                remedy=f"overfit: use {peak.label} or an earlier checkpoint; next training lower the "
                f"learning rate ({_lowered_lr(learning_rate)}) or train fewer steps",
            )
        ]
    if (
        peak_index == len(per_checkpoint) - 1
        and last.joint_score > first.joint_score
        and not last.meets_target
    ):
        return [
            Advice(
                code="still_improving",
                symptom="still improving at the last checkpoint",
                evidence=f"{first.label}: {first.success_rate:.0%} → {last.label}: {last.success_rate:.0%}",
                remedy="train longer (+2 epochs, seed 002) and evaluate again",
            )
        ]
    return []


def _undertrained(cells: Sequence[CellSummary], selection: Selection) -> Advice | None:
    """The chosen checkpoint meets the target only at its highest strength."""
    row = sorted((c for c in cells if c.checkpoint_id == selection.checkpoint_id), key=lambda c: c.strength)
    if len(row) < 2 or not row[-1].meets_target or any(c.meets_target for c in row[:-1]):
        return None
    weakest = row[0]
    return Advice(
        code="undertrained",
        symptom=f"likeness only at strength {strength_text(row[-1].strength)}",
        evidence=f"{row[-1].success_rate:.0%} at strength {strength_text(row[-1].strength)} but {weakest.success_rate:.0%} "
        f"at {strength_text(weakest.strength)} ({row[-1].label})",
        remedy="undertrained: train more steps (+2 epochs) or raise the learning rate; a finished LoRA holds "
        "the likeness from 0.6 to 1.0 (seed 002)",
    )


def _failing_prompts(
    samples: Sequence[SampleRecord], selection: Selection, threshold: float, allow_nsfw: bool
) -> list[str]:
    return sorted(
        s.prompt_key
        for s in samples
        if s.checkpoint_id == selection.checkpoint_id
        and s.strength == selection.strength
        and not s.success(threshold, allow_nsfw)
    )


def _raised_lr(current: float | None) -> str:
    """Seed 002's underfit remedy: raise the learning rate to 3e-4 (or say it is already there)."""
    if current is None:
        return "e.g. to 3e-04"
    if current >= UNDERFIT_LR:
        return f"it is already {current:.0e}, so train longer rather than faster"
    return f"{current:.0e} → {UNDERFIT_LR:.0e}"


def _lowered_lr(current: float | None) -> str:
    return f"{current:.0e} → {current / 2:.0e}" if current else "e.g. halve it"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
