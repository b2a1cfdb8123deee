"""Pick an engine for each request: capability, NSFW policy, the user's order, health and budget.

Invariant: NSFW work — the character is flagged NSFW, the request says so, or its prompt classifies as
NSFW — is never given to a provider with `allows_nsfw = False` (every external API). Transient failures
(429, 5xx, timeouts) are retried with exponential backoff and jitter, then the next provider is tried; a
permanent failure stops at once with the provider's own message.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from flenwheel.errors import FlenwheelError
from flenwheel.providers.base import (
    Cancelled,
    GenerationRequest,
    GenerationResult,
    ImageProvider,
    ProviderError,
    required_capabilities,
)
from flenwheel.store.run import CallStillBilling, PolicyRefused, RunCancelled, RunContext, is_paid


class NoProvider(FlenwheelError):
    """No configured provider may take this request; the message lists why each was passed over."""


def is_nsfw(request: GenerationRequest, character_nsfw: bool) -> bool:
    """NSFW when the character is, the request says so, its prompt classifies so, or an input image does
    (an upscale or edit of an explicit image must not leave this machine either)."""
    from flenwheel.safety import classify_image, classify_prompt

    if character_nsfw or request.nsfw or classify_prompt(request.prompt):
        return True
    inputs = [getattr(request, "image", None), *getattr(request, "references", ())]
    return any(classify_image(data).nsfw for data in inputs if data)


@dataclass(frozen=True)
class Route:
    providers: tuple[ImageProvider, ...]
    passed_over: tuple[tuple[str, str], ...]  # (provider id, why)


def plan_route(
    providers: Sequence[ImageProvider], request: GenerationRequest, nsfw: bool, preferred: str | None = None
) -> Route:
    """The providers that may take the request, in order; raises NoProvider when none may."""
    needed = required_capabilities(request)
    usable, passed = [], []
    for provider in providers:
        if preferred is not None and provider.id != preferred:
            continue
        missing = needed - provider.capabilities
        if missing:
            passed.append((provider.id, f"cannot do {', '.join(sorted(m.value for m in missing))}"))
        elif nsfw and not provider.allows_nsfw:
            passed.append((provider.id, "external API: NSFW work stays on self-hosted engines"))
        elif not _healthy(provider):
            passed.append((provider.id, "not reachable right now"))
        else:
            usable.append(provider)
    if not usable:
        if preferred is not None and not passed:
            known = ", ".join(p.id for p in providers) or "none"
            raise NoProvider(f"provider {preferred!r} is not configured (configured: {known})")
        reasons = "; ".join(f"{pid}: {why}" for pid, why in passed) or "no providers are configured"
        raise NoProvider(f"no provider can take this {request.kind} request — {reasons}")
    return Route(tuple(usable), tuple(passed))


def _healthy(provider: ImageProvider) -> bool:
    check = getattr(provider, "healthy", None)
    return bool(check()) if callable(check) else True


@dataclass(frozen=True)
class Routed:
    """What the router returns: the engine's result and the call scope to settle it in the step's transaction."""

    result: GenerationResult
    call: RunContext


class Router:
    """Runs one request on the first engine of its route that succeeds.

    Policies, all in this one path: NSFW work only on engines with `allows_nsfw`; a paid engine reserves
    its worst-case estimate before the call (`RunContext.call`); transient errors are retried with
    exponential backoff and jitter (tenacity-free: the attempt loop must see the run's cancel between
    tries), then the next engine is tried — unless the engine had accepted the work (it may still run and
    bill), in which case the reservation is kept (a retry on the same engine resumes the remote job by its
    remembered id, it never submits a second one) and `CallStillBilling` asks for a retry of the same run,
    which resumes the same remote job."""

    def __init__(
        self,
        providers: Sequence[ImageProvider],
        max_attempts: int = 3,
        base_delay: float = 0.5,
        max_delay: float = 8.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.providers = list(providers)
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.sleep = sleep

    def backoff(self, attempt: int) -> float:
        return min(self.max_delay, self.base_delay * 2**attempt) * random.uniform(0.5, 1.5)

    def run(
        self,
        request: GenerationRequest,
        ctx: RunContext,
        nsfw: bool,
        key: str,
        preferred: str | None = None,
        on_attempt: Callable[[str, int, str | None], None] | None = None,
    ) -> Routed:
        """Route `request` (fingerprinted by `key`) within `ctx`'s budget and cancellation.

        Raises NoProvider (nothing may take it / every engine failed before accepting), BudgetExceeded,
        CallStillBilling (an engine accepted and then failed: retry the run to resume it), RunCancelled, or
        the engine's permanent ProviderError."""
        route = plan_route(self.providers, request, nsfw, preferred)
        failures: list[str] = []
        for provider in route.providers:
            if nsfw and not provider.allows_nsfw:  # the invariant, checked where it matters
                raise PolicyRefused(f"{provider.id}: NSFW work never leaves self-hosted engines")
            ctx.check_cancelled()
            call = ctx.call(
                provider.id,
                key,
                estimate=provider.estimate_cost(request),
                paid=is_paid(provider),
                what=f"{provider.id} {request.kind}",
            )
            try:
                result = self._with_retries(provider, request, call, on_attempt)
            except ProviderError as exc:
                if not exc.transient:
                    # a definitive failure: the remote job is over and made nothing; the row keeps why
                    call.fail(f"{request.kind}: {exc}")
                    raise
                call.release()
                call.note_error(f"{request.kind}: {exc}")
                if call.may_still_bill():
                    raise CallStillBilling(
                        f"{provider.id} accepted the {request.kind} request and then failed ({exc}); it may "
                        f"still run and bill, so its reservation is kept and no other paid engine is tried. "
                        f"Retry the job to resume it."
                    ) from exc
                if not exc.transient:
                    raise
                failures.append(str(exc))
                continue
            except Cancelled as exc:
                billed = getattr(exc, "billed_usd", None)
                if billed is not None:
                    call.settle(billed)
                else:
                    call.release()
                raise RunCancelled(str(exc)) from exc
            except BaseException:
                call.release()
                raise
            return Routed(result, call)
        raise NoProvider("every provider failed: " + " | ".join(failures))

    def _with_retries(
        self,
        provider: ImageProvider,
        request: GenerationRequest,
        ctx: RunContext,
        on_attempt: Callable[[str, int, str | None], None] | None,
    ) -> GenerationResult:
        for attempt in range(self.max_attempts):
            try:
                if on_attempt:
                    on_attempt(provider.id, attempt, None)
                return provider.generate(request, ctx)
            except ProviderError as exc:
                if not exc.transient or attempt == self.max_attempts - 1:
                    raise
                if on_attempt:
                    on_attempt(provider.id, attempt, str(exc))
                self.sleep(self.backoff(attempt))
                ctx.check_cancelled()
        raise AssertionError("unreachable")
