"""The job layer's own kinds, for tests, benchmarks and operations: `noop` (are the workers alive?) and `sleep`
(progress, cancellation, failures on purpose). Test kinds: submitted only where FLENWHEEL_TEST_KINDS=1. The
pipeline's stages are kinds of their own (pipeline/kinds.py)."""

from __future__ import annotations

import time
from typing import Any

from pydantic import Field, model_validator

from flenwheel.domain import Frozen
from flenwheel.errors import FlenwheelError
from flenwheel.jobs.base import JobCancelled, JobContext, TransientJobError
from flenwheel.jobs.kinds import parse
from flenwheel.store.project import Project

MAX_SLEEP_S = 3600.0


class NoopPayload(Frozen):
    """The test kind `noop`: echoes its payload."""

    character: str | None = Field(default=None, max_length=64)
    note: str = Field(default="", max_length=200)


class SleepPayload(Frozen):
    """The test kind `sleep`: `steps` × `step_s` seconds (bounded: a worker must not be parked for hours)."""

    character: str | None = Field(default=None, max_length=64)
    steps: int = Field(default=3, ge=0, le=100_000)
    step_s: float = Field(default=0.05, ge=0.0, le=1.0)
    fail: str | None = Field(default=None, max_length=500)
    transient_failures: int = Field(default=0, ge=0, le=10)

    @model_validator(mode="after")
    def _bounded(self) -> SleepPayload:
        if self.steps * self.step_s > MAX_SLEEP_S:
            raise ValueError(
                f"steps × step_s is at most {MAX_SLEEP_S:g} s: a test job must not park a worker"
            )
        return self


def noop(project: Project, payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Does nothing and returns its payload: checks that workers are alive."""
    parse(NoopPayload, payload, "noop")
    ctx.progress(1, 1, "done")
    return {"echo": payload}


def sleep(project: Project, payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """`steps` steps of `step_s` seconds with progress and cancellation; can fail on purpose:
    `fail` (message, permanent) or `transient_failures` (that many attempts fail transiently first)."""
    p = parse(SleepPayload, payload, "sleep")
    steps, step_s = p.steps, p.step_s
    attempt = int(ctx.known_external_id("sleep_attempt") or 0) + 1
    ctx.remember_external_id("sleep_attempt", str(attempt))
    if attempt <= p.transient_failures:
        raise TransientJobError(f"attempt {attempt} failed on purpose (transient)")
    if p.fail:
        raise FlenwheelError(p.fail)
    ctx.progress(0, steps, "starting")
    for step in range(steps):
        if ctx.cancelled():
            raise JobCancelled(f"cancelled after {step} of {steps} steps")
        time.sleep(step_s)
        ctx.progress(step + 1, steps, f"step {step + 1} of {steps}")
    return {"steps": steps, "attempt": attempt}
