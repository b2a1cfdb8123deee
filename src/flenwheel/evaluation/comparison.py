"""Compare two LoRAs on the model-card benchmark (seed 001 step 1.8: "v2 shows improvement on benchmark
images"): same prompts, same seeds, one image per prompt from each side's selected checkpoint and strength.

- Success per image is evaluation/selection.py's: a face, within the identity threshold, not a near copy,
  not NSFW (unless allowed). The success rate comes with a 95 % Wilson score interval
  (E. B. Wilson, "Probable inference…", JASA 22 (1927) 209–212), which behaves at 0/n and n/n.
- Better or worse is decided on the *paired* outcomes (the same prompt and seed on both sides) with the exact
  McNemar test: under "no difference" the discordant prompts split as Binomial(b + c, ½); two-sided
  p < 0.05 says which side wins. Otherwise the verdict is "not distinguishable at this sample size".
- Nothing measured (no image with a face on a side) gives "not measurable": no verdict, no target claim.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from flenwheel.domain import Frozen
from flenwheel.errors import InvalidInput
from flenwheel.evaluation.selection import SUCCESS_TARGET, SampleRecord

Z_95 = 1.959963984540054  # two-sided 95 % normal quantile
ALPHA = 0.05
Verdict = Literal["better", "worse", "not distinguishable", "not measurable"]
CellChange = Literal["improved", "regressed", "same", "not measured"]


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927); (0, 1) when n = 0.
    Raises ValueError for counts outside 0 ≤ successes ≤ n."""
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes} must lie in 0..{n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant pairs: 2·P[X ≤ min(b, c)], X ~ Bin(b+c, ½),
    capped at 1 (McNemar 1947; the exact binomial form)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


class BenchmarkSide(Frozen):
    """One LoRA's images on the benchmark: the selected checkpoint × strength's samples, with their seeds."""

    label: str = Field(min_length=1, max_length=80)  # e.g. "v1 (run 3)"
    samples: tuple[SampleRecord, ...]
    seeds: dict[str, int]  # prompt key → seed
    threshold: float = Field(gt=0.0)
    allow_nsfw: bool = False


class SideSummary(Frozen):
    label: str
    images: int
    faces: int
    successes: int
    success_rate: float
    interval: tuple[float, float]  # 95 % Wilson
    mean_similarity: float | None  # 1 − identity distance, over images with a face (not near copies)
    measured: bool  # at least one image showed a face


class CellComparison(Frozen):
    key: str
    before: bool | None  # success; None = not measured (no face on that image)
    after: bool | None
    change: CellChange


class Comparison(Frozen):
    """v(N) against v(N+1): each side's numbers, the paired test, the verdict in words, the target."""

    before: SideSummary
    after: SideSummary
    prompts: int
    discordant: tuple[int, int]  # (only before succeeded, only after succeeded)
    p_value: float | None
    verdict: Verdict
    target: float = SUCCESS_TARGET
    target_met: bool | None  # None: not measurable
    cells: tuple[CellComparison, ...]
    summary: str


def summarise_side(side: BenchmarkSide) -> SideSummary:
    images = len(side.samples)
    successes = sum(sample.success(side.threshold, side.allow_nsfw) for sample in side.samples)
    faces = sum(sample.face_found for sample in side.samples)
    similarities = [
        s.similarity for s in side.samples if s.similarity is not None and s.face_found and not s.near_copy
    ]
    low, high = wilson_interval(successes, images)
    return SideSummary(
        label=side.label,
        images=images,
        faces=faces,
        successes=successes,
        success_rate=round(successes / images, 4) if images else 0.0,
        interval=(round(low, 4), round(high, 4)),
        mean_similarity=round(statistics.fmean(similarities), 4) if similarities else None,
        measured=faces > 0,
    )


def compare_benchmarks(before: BenchmarkSide, after: BenchmarkSide) -> Comparison:
    """Compare two sides prompt by prompt. Raises InvalidInput when they did not draw the same prompts with
    the same seeds (then no paired comparison is fair), or when a prompt has two samples on one side."""
    if before.seeds != after.seeds:
        raise InvalidInput(
            f"{before.label} and {after.label} were evaluated on different prompts or seeds: evaluate both "
            "with the same prompt set (`flenwheel evaluate NAME RUN --prompts …`) to compare them"
        )
    by_key: list[dict[str, SampleRecord]] = []
    for side in (before, after):
        keyed = {sample.prompt_key: sample for sample in side.samples}
        if len(keyed) != len(side.samples):
            raise InvalidInput(
                f"{side.label}: one image per prompt is compared; pick one checkpoint × strength"
            )
        by_key.append(keyed)
    keys = [key for key in before.seeds if key in by_key[0] and key in by_key[1]]
    first, second = summarise_side(before), summarise_side(after)
    cells = []
    only_before = only_after = 0
    for key in keys:
        old, new = by_key[0][key], by_key[1][key]
        old_ok = old.success(before.threshold, before.allow_nsfw) if old.face_found else None
        new_ok = new.success(after.threshold, after.allow_nsfw) if new.face_found else None
        only_before += bool(old.success(before.threshold, before.allow_nsfw)) and not new.success(
            after.threshold, after.allow_nsfw
        )
        only_after += bool(new.success(after.threshold, after.allow_nsfw)) and not old.success(
            before.threshold, before.allow_nsfw
        )
        change: CellChange
        if old_ok is None and new_ok is None:
            change = "not measured"
        elif bool(new_ok) and not old_ok:
            change = "improved"
        elif bool(old_ok) and not new_ok:
            change = "regressed"
        else:
            change = "same"
        cells.append(CellComparison(key=key, before=old_ok, after=new_ok, change=change))
    verdict: Verdict
    p_value: float | None = None
    if not (first.measured and second.measured):
        verdict = "not measurable"
        target_met = None
        nobody = " and ".join(s.label for s in (first, second) if not s.measured)
        summary = (
            f"not measurable: no image of {nobody} showed a face, so neither identity nor success could be "
            "measured; no verdict on better or worse, and no claim about the 80 % target"
        )
    else:
        p_value = round(mcnemar_exact_p(only_before, only_after), 4)
        if p_value < ALPHA and only_after > only_before:
            verdict = "better"
        elif p_value < ALPHA and only_before > only_after:
            verdict = "worse"
        else:
            verdict = "not distinguishable"
        target_met = second.success_rate >= SUCCESS_TARGET
        summary = (
            f"{second.label} is {_verdict_words(verdict, len(keys))}: success {first.success_rate:.0%} "
            f"[{first.interval[0]:.0%}–{first.interval[1]:.0%}] → {second.success_rate:.0%} "
            f"[{second.interval[0]:.0%}–{second.interval[1]:.0%}] (95 % Wilson), {only_after} prompt(s) "
            f"fixed and {only_before} broken, exact McNemar p = {p_value:.3f}; the {SUCCESS_TARGET:.0%} "
            f"target is {'met' if target_met else 'not met'}"
        )
    return Comparison(
        before=first,
        after=second,
        prompts=len(keys),
        discordant=(only_before, only_after),
        p_value=p_value,
        verdict=verdict,
        target_met=target_met,
        cells=tuple(cells),
        summary=summary,
    )


def _verdict_words(verdict: Verdict, prompts: int) -> str:
    if verdict == "not distinguishable":
        return f"not distinguishable from the previous version at this sample size ({prompts} prompts)"
    return f"{verdict} than the previous version"


def side_from_samples(
    label: str,
    samples: Sequence[SampleRecord],
    seeds: dict[str, int],
    threshold: float,
    checkpoint_id: int,
    strength: float,
    allow_nsfw: bool = False,
) -> BenchmarkSide:
    """The side of one checkpoint × strength out of an evaluation's samples."""
    chosen = tuple(
        s for s in samples if s.checkpoint_id == checkpoint_id and round(s.strength, 4) == round(strength, 4)
    )
    return BenchmarkSide(label=label, samples=chosen, seeds=seeds, threshold=threshold, allow_nsfw=allow_nsfw)
