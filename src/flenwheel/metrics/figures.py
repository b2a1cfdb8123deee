"""Seed 003's success metrics from the recorded requests (records.py): P50/P90 time-to-first and time-to-all,
completion and failure rates with the most frequent error kinds, cost per image, spend per character against
its caps, the identity pass rate of studio images per mode — and each SLA of seed 003 marked met or not met.

Percentiles are numpy's (`numpy.percentile`, linear interpolation between closest ranks), always shown with
their sample count; with fewer than `MIN_SAMPLES` samples no percentile is given, and no SLA is judged.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal

import numpy as np
from pydantic import Field

from flenwheel.domain import Frozen
from flenwheel.errors import InvalidInput
from flenwheel.metrics.records import (
    CREATION_AREAS,
    LORA_AREAS,
    Area,
    Request,
    Spend,
    StudioImage,
)

MIN_SAMPLES = 5  # below this a percentile says more about luck than about the engine
TOP_ERRORS = 3
TINY_MODEL = "tiny"  # providers/tiny_model.py TINY_MODEL_ID: random weights, drawn on the CPU
# Seed 003 "Budget": ≤ $2 per influencer creation (base + profile set), ≤ $5 including LoRA training.
CREATION_CAP_USD = 2.0
LORA_CAP_USD = 5.0
# Seed 000 step 6: the share of studio images that keep the identity, per mode.
IDENTITY_EXPECTED = {"identity_reference": 0.80, "lora": 0.95}

Measure = Literal["first", "all"]


class Sla(Frozen):
    """One P50 target of seed 003: `area`'s time-to-`measure` under `target_s` seconds."""

    area: Area
    measure: Measure
    target_s: float
    says: str  # the seed's own words


# Seed 003, "MVP Feature Table" and each area's acceptance criteria (all P50).
SLAS: tuple[Sla, ...] = (
    Sla(area=Area.BASE_IMAGES, measure="first", target_s=10, says="first base image < 10 s"),
    Sla(area=Area.BASE_IMAGES, measure="all", target_s=30, says="all 3 base images < 30 s"),
    Sla(area=Area.PROFILE_SET, measure="first", target_s=15, says="first profile image < 10–15 s"),
    Sla(area=Area.PROFILE_SET, measure="all", target_s=60, says="profile set (8 images) < 60 s"),
    Sla(area=Area.REGENERATE, measure="all", target_s=15, says="regenerate one profile image < 15 s"),
    Sla(area=Area.STUDIO_GENERATE, measure="first", target_s=20, says="studio: first image < 20 s"),
    Sla(area=Area.STUDIO_GENERATE, measure="all", target_s=60, says="studio: final image < 60 s (draft)"),
    Sla(area=Area.EDIT, measure="all", target_s=60, says="edit (inpaint) < 60 s"),
    Sla(area=Area.UPSCALE, measure="all", target_s=30, says="upscale < 30 s"),
)


class Percentiles(Frozen):
    """P50/P90 of `samples` values in seconds; None when there are fewer than MIN_SAMPLES (then the range of
    the few values is given instead, so they are seen but not taken for a percentile)."""

    samples: int
    p50_s: float | None = None
    p90_s: float | None = None
    min_s: float | None = None
    max_s: float | None = None

    @property
    def text(self) -> str:
        if self.p50_s is None or self.p90_s is None:
            if not self.samples:
                return "n=0"
            return f"n={self.samples} (<{MIN_SAMPLES}): {self.min_s:.1f}–{self.max_s:.1f} s"
        return f"{self.p50_s:.1f}/{self.p90_s:.1f} s (n={self.samples})"


def percentiles(values: Sequence[float]) -> Percentiles:
    """numpy's P50 and P90 (linear interpolation) of `values`, with the sample count; none below 5 samples."""
    if len(values) < MIN_SAMPLES:
        if not values:
            return Percentiles(samples=0)
        return Percentiles(samples=len(values), min_s=round(min(values), 3), max_s=round(max(values), 3))
    p50, p90 = np.percentile(np.asarray(values, dtype=np.float64), [50, 90])
    return Percentiles(samples=len(values), p50_s=round(float(p50), 3), p90_s=round(float(p90), 3))


class ErrorCount(Frozen):
    kind: str
    count: int


class EngineFigures(Frozen):
    """One area on one engine: rates, latencies, cost. `models`: the models its outputs came from, most used
    first (a request that failed before any output has no model, so rates are per engine)."""

    area: Area
    engine: str
    models: tuple[str, ...]
    hardware: str  # what the figures were measured on, as far as the store says
    requests: int
    succeeded: int
    failed: int
    cancelled: int
    unfinished: int
    completion_rate: float | None  # succeeded / finished requests
    failure_rate: float | None  # failed (incl. interrupted) / finished requests
    errors: tuple[ErrorCount, ...]
    time_to_first: Percentiles
    time_to_all: Percentiles
    images: int
    cost_usd: float
    cost_per_image_usd: float | None


class SlaVerdict(Frozen):
    """One SLA of seed 003 against what was measured: met, not met, or not enough samples to say."""

    area: Area
    measure: Measure
    says: str
    target_s: float
    figures: Percentiles
    verdict: Literal["met", "not met", "too few samples"]
    engines: tuple[str, ...]  # "engine/model" that produced the samples
    note: str  # e.g. the tiny model on a CPU is not a GPU


class SpendFigures(Frozen):
    """A character's money against seed 003's caps (USD)."""

    character_id: int
    character: str
    creation_usd: float
    creation_cap_usd: float = CREATION_CAP_USD
    creation_within_cap: bool
    with_lora_usd: float
    with_lora_cap_usd: float = LORA_CAP_USD
    with_lora_within_cap: bool
    total_usd: float  # every area, the studio included
    committed_usd: float  # the budget's running total (reservations of calls that may still bill included)
    budget_usd: float
    by_area: dict[str, float]


class IdentityFigures(Frozen):
    """Studio images of one mode by what the identity check said. The pass rate is passed / (passed +
    drifted): `not measurable` (no face to compare) and `not checked` are counted apart, never as a pass."""

    mode: str
    images: int
    passed: int
    drifted: int
    not_measurable: int
    not_checked: int
    pass_rate: float | None  # None below MIN_SAMPLES measured images
    expected: float | None  # seed 000's expectation for the mode


class Stats(Frozen):
    """Everything `flenwheel stats` and GET /stats show."""

    since: datetime | None
    until: datetime
    characters: tuple[int, ...] | None  # None: every character the caller may see
    requests: int
    slas: tuple[SlaVerdict, ...]
    engines: tuple[EngineFigures, ...]
    spend: tuple[SpendFigures, ...]
    identity: tuple[IdentityFigures, ...]
    notes: tuple[str, ...] = Field(default=())


def parse_since(text: str | None, now: datetime | None = None) -> datetime | None:
    """`7d`, `12h`, `30m`, `2w` (a window ending now), an ISO date or timestamp, or `all` / None (no window)."""
    if text is None or text.strip().lower() in ("", "all"):
        return None
    now = now or datetime.now(UTC)
    found = re.fullmatch(r"\s*(\d{1,5})\s*([smhdw])\s*", text.lower())
    if found:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[found.group(2)]
        return now - timedelta(**{unit: int(found.group(1))})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(
            f"--since {text!r} is not a window: give e.g. 7d, 12h, 30m, 2w, a date (2026-11-01) or `all`"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# -- error kinds ----------------------------------------------------------------------------------------------
_ERROR_KINDS: tuple[tuple[str, str], ...] = (
    (r"\bbudget\b", "budget exceeded"),
    (r"\bnsfw\b", "NSFW policy"),
    (r"cancelled|canceled", "cancelled"),
    (r"no provider|every provider failed|not configured", "no engine"),
    (r"still running after|timed? ?out|timeout", "timeout"),
    (r"worker (died|stopped|was lost)|interrupted|heartbeat", "worker lost"),
    (r"not reachable|connect(ion)? (refused|error)|could not connect", "unreachable"),
    (r"no face|not measurable", "no face"),
)


def error_kind(error: str | None) -> str:
    """A short, countable kind for an error message: the HTTP status an engine answered (`fal HTTP 422`),
    else a family named by the message (budget exceeded, NSFW policy, timeout, …), else its first words."""
    if not error:
        return "unknown"
    text = error.strip()
    lowered = text.lower()
    engine = re.match(r"^(?:[a-z_]+: )?([a-z][a-z0-9_-]{1,31}): ", lowered)
    status = re.search(r"\bHTTP (\d{3})\b", text)
    if status:
        return f"{engine.group(1)} HTTP {status.group(1)}" if engine else f"HTTP {status.group(1)}"
    for pattern, kind in _ERROR_KINDS:
        if re.search(pattern, lowered):
            return kind
    head = re.split(r"[:.(—\n]", text, maxsplit=1)[0].strip()
    return head[:60] or "unknown"


# -- aggregation ----------------------------------------------------------------------------------------------
def hardware_of(engine: str, models: Sequence[str]) -> str:
    """What ran the requests, as far as the store knows: the tiny model is random weights on a CPU."""
    if TINY_MODEL in models:
        return "tiny model on CPU (not a GPU: not comparable with the SLA)"
    if engine in ("fal", "replicate"):
        return f"{engine} (remote API)"
    if engine == "comfyui":
        return "ComfyUI server"
    if engine in ("local", "esrgan"):
        return "this machine"
    return engine


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def engine_figures(requests: Iterable[Request]) -> list[EngineFigures]:
    """One row per (area, engine), in area order then by engine."""
    groups: dict[tuple[Area, str], list[Request]] = defaultdict(list)
    for request in requests:
        groups[(request.area, request.engine)].append(request)
    order = list(Area)
    rows = []
    for (area, engine), group in sorted(
        groups.items(), key=lambda item: (order.index(item[0][0]), item[0][1])
    ):
        models = tuple(m for m, _ in Counter(r.model for r in group if r.model).most_common())
        succeeded = sum(r.status == "succeeded" for r in group)
        failed = sum(r.status in ("failed", "interrupted") for r in group)
        cancelled = sum(r.status == "cancelled" for r in group)
        finished = succeeded + failed + cancelled
        errors = Counter(error_kind(r.error) for r in group if r.status in ("failed", "interrupted"))
        images = sum(r.images for r in group)
        cost = round(sum(r.cost_usd for r in group), 6)
        rows.append(
            EngineFigures(
                area=area,
                engine=engine,
                models=models,
                hardware=hardware_of(engine, models),
                requests=len(group),
                succeeded=succeeded,
                failed=failed,
                cancelled=cancelled,
                unfinished=len(group) - finished,
                completion_rate=_rate(succeeded, finished),
                failure_rate=_rate(failed, finished),
                errors=tuple(
                    ErrorCount(kind=kind, count=count)
                    for kind, count in sorted(errors.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_ERRORS]
                ),
                time_to_first=percentiles([t for r in group if (t := r.time_to_first_s) is not None]),
                time_to_all=percentiles([t for r in group if (t := r.time_to_all_s) is not None]),
                images=images,
                cost_usd=cost,
                cost_per_image_usd=round(cost / images, 6) if images else None,
            )
        )
    return rows


def sla_verdicts(requests: Sequence[Request]) -> list[SlaVerdict]:
    """Each SLA of seed 003 against the P50 of its area's samples (every engine together: what users got)."""
    verdicts = []
    for sla in SLAS:
        samples: list[float] = []
        engines: Counter[str] = Counter()
        for request in requests:
            if request.area is not sla.area:
                continue
            value = request.time_to_first_s if sla.measure == "first" else request.time_to_all_s
            if value is not None:
                samples.append(value)
                engines[f"{request.engine}/{request.model}" if request.model else request.engine] += 1
        figures = percentiles(samples)
        if figures.p50_s is None:
            verdict: Literal["met", "not met", "too few samples"] = "too few samples"
        else:
            verdict = "met" if figures.p50_s < sla.target_s else "not met"
        tiny = [name for name in engines if name.endswith(f"/{TINY_MODEL}")]
        note = ""
        if tiny and len(tiny) == len(engines):
            note = "measured on the tiny model on a CPU, not a GPU: not what users of a real engine get"
        elif tiny:
            note = "includes tiny-model samples drawn on a CPU"
        verdicts.append(
            SlaVerdict(
                area=sla.area,
                measure=sla.measure,
                says=sla.says,
                target_s=sla.target_s,
                figures=figures,
                verdict=verdict,
                engines=tuple(name for name, _ in engines.most_common()),
                note=note,
            )
        )
    return verdicts


def spend_figures(spend: Iterable[Spend]) -> list[SpendFigures]:
    rows = []
    for character in spend:
        creation = sum(v for k, v in character.by_area.items() if k in CREATION_AREAS)
        with_lora = sum(v for k, v in character.by_area.items() if k in LORA_AREAS)
        rows.append(
            SpendFigures(
                character_id=character.character_id,
                character=character.name,
                creation_usd=round(creation, 6),
                creation_within_cap=creation <= CREATION_CAP_USD + 1e-9,
                with_lora_usd=round(with_lora, 6),
                with_lora_within_cap=with_lora <= LORA_CAP_USD + 1e-9,
                total_usd=round(sum(character.by_area.values()), 6),
                committed_usd=round(character.spent_usd, 6),
                budget_usd=character.budget_usd,
                by_area={k: round(v, 6) for k, v in sorted(character.by_area.items())},
            )
        )
    return rows


def identity_figures(images: Iterable[StudioImage]) -> list[IdentityFigures]:
    by_mode: dict[str, list[StudioImage]] = defaultdict(list)
    for image in images:
        by_mode[image.mode].append(image)
    rows = []
    for mode in sorted(by_mode):
        group = by_mode[mode]
        passed = sum(i.identity == "passed" for i in group)
        drifted = sum(i.identity == "drifted" for i in group)
        measured = passed + drifted
        rows.append(
            IdentityFigures(
                mode=mode,
                images=len(group),
                passed=passed,
                drifted=drifted,
                not_measurable=sum(i.identity == "not measurable" for i in group),
                not_checked=sum(i.identity is None for i in group),
                pass_rate=round(passed / measured, 4) if measured >= MIN_SAMPLES else None,
                expected=IDENTITY_EXPECTED.get(mode),
            )
        )
    return rows
