"""The router: capability, the NSFW invariant, the user's order, retries with backoff, fallback, budget."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flenwheel.providers.base import Capability, LoraRef, TextToImage, Upscale
from flenwheel.providers.router import NoProvider, Router, is_nsfw, plan_route
from flenwheel.store.run import CallStillBilling, RunContext

from engines import ALL, ScriptedEngine, permanent, transient

engines = st.builds(
    ScriptedEngine,
    id=st.sampled_from(["a", "b", "c", "d", "e"]),
    capabilities=st.frozensets(st.sampled_from(list(Capability)), min_size=1),
    allows_nsfw=st.booleans(),
)
requests = st.builds(
    TextToImage,
    prompt=st.text(max_size=60),
    nsfw=st.booleans(),
    loras=st.lists(st.builds(LoraRef, path=st.just("x.safetensors")), max_size=1).map(tuple),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(engines, max_size=5, unique_by=lambda e: e.id), requests, st.booleans())
def test_nsfw_work_never_reaches_a_provider_that_forbids_it(providers, request, character_nsfw) -> None:
    nsfw = is_nsfw(request, character_nsfw)
    try:
        route = plan_route(providers, request, nsfw)
    except NoProvider:
        return
    assert all(p.allows_nsfw for p in route.providers) or not nsfw
    if character_nsfw or request.nsfw:
        assert nsfw


def test_an_nsfw_character_is_kept_off_external_apis_even_when_asked_for() -> None:
    external, local = ScriptedEngine("fal"), ScriptedEngine("local", allows_nsfw=True)
    with pytest.raises(NoProvider, match="fal: external API: NSFW work stays on self-hosted engines"):
        Router([external, local]).run(
            TextToImage(prompt="portrait"), RunContext.detached(), nsfw=True, key="k", preferred="fal"
        )
    assert external.calls == []


def test_capability_and_order() -> None:
    upscaler = ScriptedEngine("esrgan", capabilities=frozenset({Capability.UPSCALE}), allows_nsfw=True)
    first, second = ScriptedEngine("comfyui", allows_nsfw=True), ScriptedEngine("fal")
    router = Router([upscaler, first, second])
    assert (
        router.run(TextToImage(prompt="x"), RunContext.detached(), nsfw=False, key="k").result.provider
        == "comfyui"
    )
    image = b"\x89PNG"  # the engines here do not decode it
    assert (
        router.run(Upscale(image=image, factor=2), RunContext.detached(), nsfw=False, key="k").result.provider
        == "esrgan"
    )


def test_transient_failures_retry_with_backoff_then_fall_back() -> None:
    flaky = ScriptedEngine("fal", failures=[transient("fal")] * 3)
    spare = ScriptedEngine("replicate")
    delays: list[float] = []
    router = Router([flaky, spare], max_attempts=3, base_delay=0.5, sleep=delays.append)
    result = router.run(TextToImage(prompt="x"), RunContext.detached(), nsfw=False, key="k").result
    assert result.provider == "replicate" and len(flaky.calls) == 3 and len(spare.calls) == 1
    assert len(delays) == 2 and 0.25 <= delays[0] <= 0.75 and 0.5 <= delays[1] <= 1.5  # 0.5·2^k, ±50 % jitter


def test_a_transient_failure_then_success_stays_on_the_same_provider() -> None:
    flaky = ScriptedEngine("fal", failures=[transient("fal", "HTTP 429 Too Many Requests")])
    result = (
        Router([flaky, ScriptedEngine("replicate")], sleep=lambda _s: None)
        .run(TextToImage(prompt="x"), RunContext.detached(), nsfw=False, key="k")
        .result
    )
    assert result.provider == "fal" and len(flaky.calls) == 2


def test_an_engine_that_accepted_then_failed_is_not_replaced_by_a_second_paid_engine() -> None:
    # fal took the job (its remote id is kept), then every poll timed out: it may still run and bill.
    flaky = ScriptedEngine("fal", price=0.05, accept_before_failing=True, failures=[transient("fal")] * 3)
    spare = ScriptedEngine("replicate", price=0.05)
    run = RunContext.detached()
    with pytest.raises(CallStillBilling, match="may still run and bill"):
        Router([flaky, spare], sleep=lambda _s: None).run(TextToImage(prompt="x"), run, nsfw=False, key="k")
    assert spare.calls == []  # no second paid engine while the first may still run
    assert run.call("fal", "k").known_remote_id() == "fal-3"  # a retry resumes the same remote job


def test_a_permanent_failure_surfaces_at_once_with_the_providers_message() -> None:
    broken, spare = ScriptedEngine("fal", failures=[permanent("fal")]), ScriptedEngine("replicate")
    with pytest.raises(Exception, match="fal: HTTP 422: prompt is required"):
        Router([broken, spare], sleep=lambda _s: None).run(
            TextToImage(prompt="x"), RunContext.detached(), nsfw=False, key="k"
        )
    assert len(broken.calls) == 1 and spare.calls == []


def test_no_configured_provider_can_do_it() -> None:
    with pytest.raises(NoProvider, match="cannot do upscale"):
        plan_route(
            [ScriptedEngine("fal", capabilities=ALL - {Capability.UPSCALE})], Upscale(image=b"x"), nsfw=False
        )
    with pytest.raises(NoProvider, match="'comfyui' is not configured"):
        plan_route([ScriptedEngine("fal")], TextToImage(prompt="x"), nsfw=False, preferred="comfyui")


def test_the_users_order_decides_which_engine_goes_first() -> None:
    from flenwheel.config import Settings
    from flenwheel.providers.registry import ProviderRegistry

    default = [p.id for p in ProviderRegistry.from_settings(Settings(fal_key="k")).all()]
    assert default.index("local") < default.index("fal")
    chosen = [
        p.id for p in ProviderRegistry.from_settings(Settings(fal_key="k", providers="fal,local")).all()
    ]
    assert chosen[:2] == ["fal", "local"] and "esrgan" in chosen


def test_a_control_image_goes_to_an_engine_that_takes_one() -> None:
    """fal and Replicate take no control image here; the local engine and ComfyUI do."""
    from flenwheel.providers.base import ControlImage
    from flenwheel.providers.fal import FalProvider
    from flenwheel.providers.replicate import ReplicateProvider

    assert Capability.CONTROLNET not in FalProvider.capabilities | ReplicateProvider.capabilities
    plain = ScriptedEngine("fal", capabilities=frozenset(FalProvider.capabilities), allows_nsfw=False)
    steerable = ScriptedEngine("comfyui", allows_nsfw=True)
    request = TextToImage(prompt="x", control=ControlImage(image=b"\x89PNG", strength=0.7))
    route = plan_route([plain, steerable], request, nsfw=False)
    assert [p.id for p in route.providers] == ["comfyui"]
    with pytest.raises(NoProvider, match="controlnet"):
        plan_route([plain], request, nsfw=False)
