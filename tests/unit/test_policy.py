"""The admission rules of DESIGN section 3, one situation each."""

from __future__ import annotations

from dataclasses import replace

from hybrid_router.core.model import (
    Container,
    Execution,
    ModelSpec,
    ProviderKind,
    ProviderSpec,
    Region,
    WaitCode,
)
from hybrid_router.core.policy import Topology, decide, positions

MODELS = ("a", "b", "c")


def topology(
    *,
    region_limit: int = 3,
    global_limit: int = 10,
    max_running: int | None = None,
    regions: tuple[str, ...] = ("US",),
    max_inputs: int = 1,
) -> Topology:
    return Topology(
        gpu_limit=global_limit,
        regions={r: Region(r, region_limit, max_running=max_running) for r in regions},
        models={m: ModelSpec(m) for m in MODELS},
        providers={
            f"p-{r}": ProviderSpec(
                f"p-{r}",
                ProviderKind.SIMULATED,
                r,
                MODELS,
                timeout_s=60,
                scaledown_window_s=10,
                max_inputs=max_inputs,
            )
            for r in regions
        },
    )


def execution(seq: int, model: str = "a", region: str = "US", priority: int = 0) -> Execution:
    return Execution(
        id=f"e{seq}",
        job_id="j",
        region=region,
        model=model,
        question_index=0,
        prompt="?",
        seq=seq,
        priority=priority,
    )


def started(
    queued: list[Execution], containers: list[Container], topo: Topology, now: float = 100.0
) -> list[str]:
    return [a.execution.id for a in decide(queued, containers, topo, now).admissions]


def warm(model: str, until: float, region: str = "US", cid: str | None = None) -> Container:
    return Container(
        cid or f"warm-{model}-{region}", f"p-{region}", model, region, 1, warm_until=until
    )


def busy(model: str, execution_id: str, region: str = "US") -> Container:
    return Container(
        f"busy-{execution_id}", f"p-{region}", model, region, 1, in_flight=(execution_id,)
    )


def test_warm_containers_inside_their_scaledown_window_hold_gpus() -> None:
    containers = [warm("a", 150), warm("b", 150), warm("c", 150)]
    # Three warm GPUs fill the region: a new model "d" would need a fourth.
    topo = topology()
    topo = replace(
        topo,
        models={**topo.models, "d": ModelSpec("d")},
        providers={"p-US": replace(topo.providers["p-US"], models=(*MODELS, "d"))},
    )
    assert started([execution(1, "d")], containers, topo) == []
    # Once they have expired the GPU is free again.
    assert started([execution(1, "d")], containers, topo, now=151) == ["e1"]


def test_a_warm_container_of_the_model_is_reused_without_a_new_gpu() -> None:
    decision = decide([execution(1, "a")], [warm("a", 150)], topology(region_limit=1), 100)
    (admission,) = decision.admissions
    assert not admission.opened and admission.container.id == "warm-a-US"


def test_later_executions_of_a_model_wait_behind_the_earlier_one() -> None:
    # One GPU: e1 runs on model a; e2 (a) waits for that container, e3 (b) needs a GPU.
    topo = topology(region_limit=1)
    assert started([execution(2, "a"), execution(3, "b")], [busy("a", "e1")], topo) == []


def test_other_models_go_on_while_one_model_waits_for_its_container() -> None:
    topo = topology(region_limit=2)
    topo = replace(topo, providers={"p-US": replace(topo.providers["p-US"], max_containers=1)})
    assert started([execution(2, "a"), execution(3, "b")], [busy("a", "e1")], topo) == ["e3"]


def test_each_model_gets_a_container_before_any_model_gets_a_second() -> None:
    # Three GPUs; three of model a queued first, then one of b: a does not take all three
    # and leave b's head waiting for one of them to scale down.
    topo = topology(region_limit=3)
    queued = [execution(1, "a"), execution(2, "a"), execution(3, "a"), execution(4, "b")]
    decision = decide(queued, [], topo, 100.0)
    assert [a.execution.id for a in decision.admissions] == ["e1", "e4", "e2"]
    # e3 waits for a container of its own model, as FIFO per model has it.
    wait = decision.waits.of(queued[2])
    assert wait is not None and wait.code is WaitCode.BEHIND_CONTAINER
    # b is already up: a's second container comes in queue order, before the others.
    assert started(
        [execution(2, "a"), execution(5, "b")], [busy("a", "e1"), busy("b", "e4")], topo
    ) == ["e2"]


def test_a_first_container_of_lower_priority_waits_for_higher_priority_work() -> None:
    topo = topology(region_limit=2)
    queued = [execution(1, "a", priority=5), execution(2, "a", priority=5), execution(3, "b")]
    assert started(queued, [], topo) == ["e1", "e2"]


def test_a_first_container_never_passes_in_sequential_mode() -> None:
    topo = topology(max_running=1)
    queued = [execution(2, "a"), execution(3, "b")]
    assert started(queued, [warm("a", 150)], topo) == ["e2"]


def test_a_head_waiting_for_a_gpu_keeps_later_ones_off_idle_containers() -> None:
    # Region full with a busy "a" and a warm "b". Head e2 needs "c" (none up): it waits for a
    # GPU, and e3 ("b") must not reuse the idle "b" container, which would keep it warm.
    topo = topology(region_limit=2)
    containers = [busy("a", "e1"), warm("b", 150)]
    assert started([execution(2, "c"), execution(3, "b")], containers, topo) == []
    assert started([execution(2, "c")], containers, topo, now=151) == ["e2"]


def test_the_oldest_head_gets_the_gpu_when_the_global_limit_binds() -> None:
    topo = topology(regions=("US", "EU"), global_limit=1)
    # EU's head (seq 1) is older than US's (seq 2): it gets the one GPU.
    assert started([execution(2, "a", "US"), execution(1, "a", "EU")], [], topo) == ["e1"]
    # With the GPU held warm by a US container, a younger US execution may not reuse it
    # while the older EU head waits for a GPU.
    containers = [warm("a", 150, region="US")]
    assert started([execution(1, "b", "EU"), execution(2, "a", "US")], containers, topo) == []


def test_higher_priority_runs_first_in_its_lane() -> None:
    topo = topology(region_limit=1)
    queued = [execution(1, "a"), execution(2, "a", priority=5)]
    assert started(queued, [], topo) == ["e2"]
    assert positions(queued) == {"e2": 1, "e1": 2}


def test_sequential_mode_runs_one_at_a_time_in_strict_order() -> None:
    topo = topology(max_running=1)
    queued = [execution(1, "a"), execution(2, "b"), execution(3, "c")]
    assert started(queued, [], topo) == ["e1"]
    assert started(queued[1:], [busy("a", "e1")], topo) == []
    # A head in backoff holds the whole region in sequential mode.
    backing_off = replace(queued[1], not_before=200.0)
    decision = decide([backing_off, queued[2]], [], topo, 100.0)
    assert decision.admissions == () and decision.wake_at == 200.0


def test_a_busy_container_with_a_free_input_slot_takes_another_call() -> None:
    topo = topology(region_limit=1, max_inputs=2)
    assert started([execution(2, "a")], [busy("a", "e1")], topo) == ["e2"]


def test_orphans_of_a_crash_hold_their_gpu_and_are_not_reused() -> None:
    orphan = replace(warm("a", 150), orphan=True)
    decision = decide([execution(1, "a")], [orphan], topology(region_limit=1), 100)
    assert decision.admissions == () and decision.wake_at == 150


def test_a_call_never_takes_the_place_of_another_providers_orphan() -> None:
    # Two providers in US; the second's orphan may still run its lost call. Booking the new
    # call there would send it to the second provider, which then opens a container of its
    # own while the first's idle one stays warm: one GPU more than the ledger counts.
    topo = topology(region_limit=3)
    second = replace(topo.providers["p-US"], name="q-US")
    topo = replace(topo, providers={**topo.providers, "q-US": second})
    idle = warm("a", 150, cid="idle")
    orphan = replace(warm("a", 120, cid="orphan"), provider="q-US", orphan=True)
    decision = decide([execution(1, "a")], [idle, orphan], topo, 100)
    assert [a.container.id for a in decision.admissions] == ["idle"]


def test_aging_lets_an_old_low_priority_execution_pass_a_new_high_one() -> None:
    topo = replace(topology(region_limit=1), priority_aging_s=10.0)
    old_low = replace(execution(1, "a"), queued_at=0.0)
    new_high = replace(execution(2, "a", priority=3), queued_at=100.0)
    # At 120 s the old one has aged by 12 > 3: it goes first.
    assert started([old_low, new_high], [], topo, now=120.0) == ["e1"]
    # Without aging the high priority one would.
    assert started([old_low, new_high], [], replace(topo, priority_aging_s=None), 120.0) == ["e2"]


def test_a_paused_region_admits_nothing_and_keeps_its_queue() -> None:
    topo = topology(regions=("US", "EU"))
    queued = [execution(1, "a", "US"), execution(2, "a", "EU")]
    assert started(queued, [], topo) == ["e1", "e2"]
    decision = decide(queued, [], topo, 100.0, closed=frozenset({"US"}))
    assert [a.execution.id for a in decision.admissions] == ["e2"]


def test_an_execution_past_its_deadline_is_not_admitted_and_blocks_no_one() -> None:
    topo = topology(region_limit=1)
    late = replace(execution(1, "a"), deadline_at=50.0)
    soon = replace(execution(2, "a"), deadline_at=300.0)
    decision = decide([late, soon], [], topo, 100.0)
    assert [a.execution.id for a in decision.admissions] == ["e2"]
    # A deadline still ahead is a moment to decide again (to expire it if still queued).
    waiting = decide([soon], [busy("a", "e0")], topo, 100.0)
    assert waiting.wake_at == 300.0


def test_a_round_admits_at_most_its_limit_and_asks_for_the_next_at_once() -> None:
    queued = [execution(seq) for seq in range(1, 6)]
    topo = topology(region_limit=5)

    first = decide(queued, [], topo, 100, limit=2)

    assert [a.execution.id for a in first.admissions] == ["e1", "e2"]
    assert first.wake_at == 100  # not at the next event: the rest could start now
    rest = [e for e in queued if e.id not in ("e1", "e2")]
    containers = [a.container for a in first.admissions]
    second = decide(rest, containers, topo, 100, limit=2)
    assert [a.execution.id for a in second.admissions] == ["e3", "e4"]
    unlimited = decide(queued, [], topo, 100)
    assert [a.execution.id for a in unlimited.admissions] == ["e1", "e2", "e3", "e4", "e5"]
