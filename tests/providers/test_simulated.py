"""SimulatedCloud and SimulatedProvider: the account model, without HTTP."""

from __future__ import annotations

import asyncio

import pytest

from hybrid_router.core.model import FailureKind, ProviderKind, ProviderSpec
from hybrid_router.providers.base import ProviderFailure
from hybrid_router.providers.simulated import SimulatedCloud, SimulatedProvider
from tests.providers.servers import LARGE, SMALL, TIME_SCALE, request

QWEN = "qwen2.5-1.5b"
# No HTTP here, so a finer scale still orders events reliably: a small model's call is 12-18 ms.
SCALE = 0.0002


class Clock:
    """A clock the test moves; the cloud reads it for warm expiry (sleeps stay real)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def provider(
    cloud: SimulatedCloud, *, region: str = "US", timeout_s: float = 10.0
) -> SimulatedProvider:
    spec = ProviderSpec(
        name=f"sim-{region.lower()}",
        kind=ProviderKind.SIMULATED,
        region=region,
        models=(SMALL, LARGE, QWEN),
        timeout_s=timeout_s,
    )
    return SimulatedProvider(spec, cloud)


async def test_warm_containers_count_against_the_account_limit() -> None:
    clock = Clock()
    cloud = SimulatedCloud(2, SCALE, scaledown_window_s=120, clock=clock)
    await cloud.run(request(SMALL, "US"))
    await cloud.run(request(QWEN, "EU"))
    assert cloud.stats()["held"] == 2  # both idle, both warm

    with pytest.raises(ProviderFailure) as refused:
        await cloud.run(request(LARGE, "US"))

    assert refused.value.failure.kind is FailureKind.CAPACITY
    assert "RESOURCE_EXHAUSTED" in refused.value.failure.message
    assert cloud.stats()["refusals"] == 1

    clock.now += 121  # both scaledown windows pass
    await cloud.run(request(LARGE, "US"))
    stats = cloud.stats()
    assert stats["held"] == 1
    assert stats["peak_held"] == 2
    assert stats["peak_held_by_region"] == {"US": 1, "EU": 1}


async def test_a_warm_container_is_reused_without_a_cold_start() -> None:
    cloud = SimulatedCloud(1, SCALE)

    first = await cloud.run(request(SMALL))
    second = await cloud.run(request(SMALL))

    assert (first.metadata["cold_start"], second.metadata["cold_start"]) == (True, False)
    assert second.metadata["container_id"] == first.metadata["container_id"]
    assert cloud.stats()["cold_starts"] == 1
    assert cloud.stats()["refusals"] == 0


async def test_busy_containers_count_and_peaks_are_per_region() -> None:
    cloud = SimulatedCloud(3, SCALE)
    calls = [
        asyncio.create_task(cloud.run(request(model, region, f"e{i}")))
        for i, (model, region) in enumerate([(SMALL, "US"), (QWEN, "US"), (SMALL, "EU")])
    ]
    await asyncio.sleep(0)
    assert cloud.stats()["busy"] == 3

    with pytest.raises(ProviderFailure):
        await cloud.run(request(LARGE, "ASIA"))
    await asyncio.gather(*calls)

    stats = cloud.stats()
    assert stats["peak_held"] == 3
    assert stats["peak_held_by_region"] == {"US": 2, "EU": 1}
    assert stats["completed"] == 3


async def test_arrival_log_keeps_arrival_order() -> None:
    cloud = SimulatedCloud(10, SCALE)
    order = [(SMALL, "US", "a"), (LARGE, "EU", "b"), (SMALL, "EU", "c"), (QWEN, "US", "d")]

    await asyncio.gather(*(cloud.run(request(m, r, e)) for m, r, e in order))

    assert cloud.stats()["arrivals"] == [(r, m, e) for m, r, e in order]


async def test_a_container_takes_max_inputs_requests_at_once() -> None:
    cloud = SimulatedCloud(1, SCALE, max_inputs=2)

    results = await asyncio.gather(cloud.run(request(SMALL)), cloud.run(request(SMALL)))

    assert results[0].metadata["container_id"] == results[1].metadata["container_id"]
    assert cloud.stats()["refusals"] == 0


async def test_durations_are_seeded() -> None:
    first = await SimulatedCloud(1, SCALE, seed=7).run(request(LARGE))
    again = await SimulatedCloud(1, SCALE, seed=7).run(request(LARGE))
    other = await SimulatedCloud(1, SCALE, seed=8).run(request(LARGE))

    assert first.inference_time == again.inference_time != other.inference_time
    assert first.inference_time is not None
    assert 150 * SCALE <= first.inference_time <= 160 * SCALE


async def test_injected_faults() -> None:
    cloud = SimulatedCloud(1, SCALE)
    cloud.fail_next = 1
    with pytest.raises(ProviderFailure) as failed:
        await cloud.run(request())
    assert failed.value.failure.kind is FailureKind.TRANSIENT

    cloud.down = True
    with pytest.raises(ProviderFailure) as failed:
        await cloud.run(request())
    assert failed.value.failure.kind is FailureKind.UNAVAILABLE

    cloud.down = False
    assert (await cloud.run(request())).response
    assert cloud.stats()["failed"] == 2


async def test_providers_of_several_regions_share_one_account() -> None:
    cloud = SimulatedCloud(1, SCALE)
    await provider(cloud, region="US").run(request(SMALL, "US"))

    with pytest.raises(ProviderFailure) as refused:
        await provider(cloud, region="EU").run(request(SMALL, "EU"))

    assert refused.value.failure.kind is FailureKind.CAPACITY


async def test_provider_timeout_cancels_the_call_and_leaves_the_container_warm() -> None:
    cloud = SimulatedCloud(1, TIME_SCALE)

    with pytest.raises(ProviderFailure) as failed:
        await provider(cloud, timeout_s=0.02).run(request(LARGE))

    assert failed.value.failure.code == "PROVIDER_TIMEOUT"
    stats = cloud.stats()
    assert (stats["cancelled"], stats["busy"], stats["held"]) == (1, 0, 1)
