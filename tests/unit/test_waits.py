"""Every execution the policy leaves queued has a reason, one situation per reason."""

from __future__ import annotations

from dataclasses import replace

from hybrid_router.core.model import Container, Execution, Wait, WaitCode
from hybrid_router.core.policy import Topology, decide, decide_indexed
from hybrid_router.core.queue_index import QueueIndex

from .test_policy import busy, execution, topology, warm


def waits(
    queued: list[Execution],
    containers: list[Container],
    topo: Topology,
    now: float = 100.0,
    closed: frozenset[str] = frozenset(),
) -> dict[str, Wait | None]:
    decision = decide(queued, containers, topo, now, closed)
    assert decision == decide_indexed(QueueIndex(queued), containers, topo, now, closed)
    admitted = {a.execution.id for a in decision.admissions}
    return {e.id: decision.waits.of(e) for e in queued if e.id not in admitted}


def codes(found: dict[str, Wait | None]) -> dict[str, WaitCode | None]:
    return {execution_id: w.code if w else None for execution_id, w in found.items()}


def test_a_retry_in_backoff_waits_until_its_backoff_ends() -> None:
    retrying = replace(execution(1), not_before=160.0)
    (wait,) = waits([retrying], [], topology()).values()
    assert wait is not None and wait.code is WaitCode.BACKOFF and wait.until == 160.0
    assert "not before 1970-01-01T00:02:40Z" in wait.message


def test_behind_a_busy_container_of_its_model_when_no_gpu_is_free() -> None:
    found = waits([execution(2, "a")], [busy("a", "e1")], topology(region_limit=1))
    assert codes(found) == {"e2": WaitCode.BEHIND_CONTAINER}


def test_no_gpu_in_the_region_names_its_limit() -> None:
    found = waits([execution(2, "b")], [busy("a", "e1")], topology(region_limit=1))
    wait = found["e2"]
    assert wait is not None and wait.code is WaitCode.NO_GPU_IN_REGION
    assert wait.limit == 1 and "US" in wait.message and "gpu_limit (1)" in wait.message


def test_no_gpu_in_the_account_when_only_the_account_limit_binds() -> None:
    topo = topology(regions=("US", "EU"), global_limit=1)
    found = waits([execution(2, "b", "EU")], [busy("a", "e1", "US")], topo)
    assert codes(found) == {"e2": WaitCode.NO_GPU_IN_ACCOUNT}


def test_an_idle_container_kept_for_a_head_waiting_for_a_gpu_is_a_reservation() -> None:
    # Region full with a busy "a" and a warm "b"; head e2 needs "c" and waits for a GPU;
    # e3 could reuse the warm "b" but that would keep the GPU e2 waits for.
    topo = topology(region_limit=2)
    found = waits([execution(2, "c"), execution(3, "b")], [busy("a", "e1"), warm("b", 150)], topo)
    assert codes(found) == {"e2": WaitCode.NO_GPU_IN_REGION, "e3": WaitCode.GPU_RESERVED}
    reserved = found["e3"]
    assert reserved is not None and reserved.behind == "e2" and "e2" in reserved.message


def test_max_running_holds_the_whole_region() -> None:
    topo = topology(max_running=1)
    found = waits([execution(2, "b"), execution(3, "c")], [busy("a", "e1")], topo)
    assert codes(found) == {"e2": WaitCode.MAX_RUNNING, "e3": WaitCode.MAX_RUNNING}


def test_max_containers_of_its_model() -> None:
    topo = topology(region_limit=3)
    topo = replace(topo, providers={"p-US": replace(topo.providers["p-US"], max_containers=1)})
    found = waits([execution(2, "a")], [busy("a", "e1")], topo)
    assert codes(found) == {"e2": WaitCode.MAX_CONTAINERS}
    assert found["e2"] is not None and found["e2"].limit == 1


def test_a_paused_region_waits_for_its_resume() -> None:
    topo = topology(regions=("US", "EU"))
    found = waits([execution(1, "a", "US")], [], topo, closed=frozenset({"US"}))
    assert codes(found) == {"e1": WaitCode.REGION_CLOSED}


def test_deeper_in_a_lane_waits_behind_its_head_and_says_why_the_head_waits() -> None:
    topo = topology(region_limit=1)
    queued = [execution(2, "a"), execution(3, "a"), execution(4, "a")]
    found = waits(queued, [busy("a", "e1")], topo)
    assert codes(found) == {
        "e2": WaitCode.BEHIND_CONTAINER,
        "e3": WaitCode.BEHIND_EARLIER,
        "e4": WaitCode.BEHIND_EARLIER,
    }
    deeper = found["e4"]
    assert deeper is not None and deeper.behind == "e2"
    assert deeper.cause is not None and deeper.cause.code is WaitCode.BEHIND_CONTAINER
    assert deeper.message.startswith("behind the earlier e2 in its queue: waits for a busy a")


def test_in_sequential_mode_a_head_in_backoff_holds_everything_behind_it() -> None:
    topo = topology(max_running=1)
    queued = [replace(execution(1, "a"), not_before=200.0), execution(2, "b")]
    found = waits(queued, [], topo)
    assert codes(found) == {"e1": WaitCode.BACKOFF, "e2": WaitCode.BEHIND_EARLIER}
    assert found["e2"] is not None and found["e2"].behind == "e1"


def test_what_starts_has_no_reason_and_a_newer_execution_has_none_yet() -> None:
    decision = decide([execution(1)], [], topology(), 100.0)
    assert [a.execution.id for a in decision.admissions] == ["e1"]
    assert decision.waits.of(execution(1)) is None
    assert decision.waits.of(execution(9, "b")) is None
