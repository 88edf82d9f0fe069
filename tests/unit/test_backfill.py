"""Backfill behind reservations: later work reuses warm containers a waiting head does not
need, and never a GPU it does (promise 2 in its strong form)."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given, note, settings
from hypothesis import strategies as st

from hybrid_router.core import ledger
from hybrid_router.core.model import (
    Container,
    Execution,
    ModelSpec,
    ProviderKind,
    ProviderSpec,
    Region,
    WaitCode,
)
from hybrid_router.core.policy import Decision, Topology, decide, decide_indexed
from hybrid_router.core.queue_index import QueueIndex

from .test_policy import execution, topology, warm

NOW = 100.0
SCALEDOWN = 10.0
MODELS = ("a", "b", "c")


def test_a_head_waiting_for_a_gpu_reserves_one_and_the_other_warm_ones_keep_serving() -> None:
    # The single-model jobs' case: three warm "a" containers fill the region, head e1 needs
    # "c". It needs one GPU, not three: e2 and e3 reuse two of them, e4 waits for the one
    # kept for e1, which frees first (the three expire together).
    topo = topology(region_limit=3)
    containers = [warm("a", 150, cid=f"a{n}") for n in range(3)]
    queued = [execution(1, "c"), *(execution(n, "a") for n in (2, 3, 4))]
    decision = decide(queued, containers, topo, NOW)
    assert [a.execution.id for a in decision.admissions] == ["e2", "e3"]
    (kept,) = {c.id for c in containers} - {a.container.id for a in decision.admissions}
    wait = decision.waits.of(queued[3])
    assert wait is not None and wait.code is WaitCode.GPU_RESERVED and wait.behind == "e1"
    # The rule before backfill kept all three idle.
    before = decide(queued, containers, replace(topo, backfill=False), NOW)
    assert before.admissions == ()
    # e1 opens when the kept one expires, as it would have before.
    rest = [queued[0], queued[3]]
    after = [a.container for a in decision.admissions] + [c for c in containers if c.id == kept]
    assert [a.execution.id for a in decide(rest, after, topo, 150).admissions] == ["e1"]


def test_the_warm_container_expiring_first_is_kept_for_the_head() -> None:
    # "a" expires first, so it is the head's; "b" may serve later work.
    topo = topology(region_limit=2)
    containers = [warm("a", 120), warm("b", 140)]
    queued = [execution(1, "c"), execution(2, "a"), execution(3, "b")]
    decision = decide(queued, containers, topo, NOW)
    assert [a.execution.id for a in decision.admissions] == ["e3"]
    assert decision.admissions[0].container.id == "warm-b-US"


def test_a_provider_that_may_route_a_call_to_the_kept_container_takes_none() -> None:
    # Two warm "a" of one provider expiring apart: the provider picks which serves a call,
    # so a call is booked on the one expiring first, the head's. It waits.
    topo = topology(region_limit=2)
    containers = [warm("a", 120, cid="a-early"), warm("a", 140, cid="a-late")]
    decision = decide([execution(1, "c"), execution(2, "a")], containers, topo, NOW)
    assert decision.admissions == ()


def test_in_sequential_mode_nothing_passes_a_waiting_head() -> None:
    topo = topology(region_limit=2, max_running=1)
    containers = [warm("a", 120), warm("b", 140)]
    decision = decide([execution(1, "c"), execution(2, "b")], containers, topo, NOW)
    assert decision.admissions == ()


def test_when_the_account_binds_the_oldest_head_keeps_the_first_gpu_to_free_anywhere() -> None:
    topo = topology(regions=("US", "EU"), global_limit=2)
    containers = [warm("a", 120, region="US"), warm("b", 140, region="EU")]
    # EU's e1 waits for the account's first GPU to free: US's "a". EU's "b" keeps serving.
    queued = [execution(1, "c", "EU"), execution(2, "a", "US"), execution(3, "b", "EU")]
    decision = decide(queued, containers, topo, NOW)
    assert [a.execution.id for a in decision.admissions] == ["e3"]


# The property: on random ledgers and queues, what backfill admits beyond the rule before it
# never takes a GPU a waiting head needs. Each head that waits for a GPU of its region
# (of the account) needs the first GPUs to free there; the instants they free at, as
# projected from the ledger after the round, are the same with backfill as without.


@st.composite
def situations(
    draw: st.DrawFn,
) -> tuple[Topology, list[Container], dict[str, float], list[Execution]]:
    names = ("US", "EU", "ASIA")[: draw(st.integers(1, 3))]
    regions = {r: Region(r, draw(st.integers(1, 4))) for r in names}
    topo = Topology(
        gpu_limit=draw(st.integers(1, 8)),
        regions=regions,
        models={m: ModelSpec(m, gpus=draw(st.integers(1, 2))) for m in MODELS},
        providers={
            f"p-{r}": ProviderSpec(
                f"p-{r}", ProviderKind.SIMULATED, r, MODELS, 60, SCALEDOWN, max_inputs=1
            )
            for r in names
        },
    )
    containers: list[Container] = []
    ends: dict[str, float] = {}  # a busy container's call ends then
    used = dict.fromkeys(names, 0)
    for n in range(draw(st.integers(0, 8))):
        region = draw(st.sampled_from(names))
        model = draw(st.sampled_from(MODELS))
        gpus = topo.gpus(model)
        if (
            used[region] + gpus > regions[region].gpu_limit
            or sum(used.values()) + gpus > topo.gpu_limit
        ):
            continue
        used[region] += gpus
        kind = draw(st.sampled_from(["idle", "idle", "busy", "orphan"]))
        cid = f"c{n}"
        until = NOW + draw(st.integers(1, int(SCALEDOWN)))
        if kind == "busy":
            containers.append(Container(cid, f"p-{region}", model, region, gpus, (f"x{n}",)))
            ends[cid] = NOW + draw(st.integers(1, 60))
        else:
            containers.append(
                Container(
                    cid,
                    f"p-{region}",
                    model,
                    region,
                    gpus,
                    warm_until=until,
                    orphan=kind == "orphan",
                )
            )
    queued = [
        execution(seq, draw(st.sampled_from(MODELS)), draw(st.sampled_from(names)))
        for seq in range(1, draw(st.integers(1, 10)) + 1)
    ]
    return topo, containers, ends, queued


def frees_at(
    topo: Topology, containers: list[Container], decision: Decision, ends: dict[str, float]
) -> tuple[dict[str, list[float]], list[float]]:
    """When each GPU frees, per region and for the account, after the round's admissions:
    now for free ones, never (as far as this round knows) for those a new call holds."""
    after = {c.id: c for c in containers}
    for admission in decision.admissions:
        after[admission.container.id] = admission.container
    newly_busy = {a.container.id for a in decision.admissions}
    by_region: dict[str, list[float]] = {r: [] for r in topo.regions}
    for c in ledger.held(after.values(), NOW):
        if c.id in newly_busy:
            at = math.inf
        elif c.in_flight:
            at = ends[c.id] + SCALEDOWN
        else:
            at = c.warm_until
        by_region[c.region] += [at] * c.gpus
    account = sorted(at for instants in by_region.values() for at in instants)
    account = [NOW] * max(0, topo.gpu_limit - len(account)) + account
    for name, instants in by_region.items():
        free = max(0, topo.regions[name].gpu_limit - len(instants))
        by_region[name] = [NOW] * free + sorted(instants)
    return by_region, account


@settings(max_examples=300, deadline=None)
@given(situations())
def test_backfill_never_takes_a_gpu_a_waiting_head_needs(
    situation: tuple[Topology, list[Container], dict[str, float], list[Execution]],
) -> None:
    topo, containers, ends, queued = situation
    note(f"{topo.gpu_limit=} {topo.regions=} {topo.models=}\n{containers=}\n{ends=}\n{queued=}")
    before = decide(queued, containers, replace(topo, backfill=False), NOW)
    after = decide(queued, containers, topo, NOW)
    assert after == decide_indexed(QueueIndex(queued), containers, topo, NOW)
    # Backfill only adds: what started before still starts.
    assert {a.execution.id for a in before.admissions} <= {a.execution.id for a in after.admissions}
    region_need = dict.fromkeys(topo.regions, 0)
    account_need = 0
    for e in queued:
        wait = before.waits.executions.get(e.id)
        if wait is not None and wait.code is WaitCode.NO_GPU_IN_REGION:
            region_need[e.region] += topo.gpus(e.model)
        elif wait is not None and wait.code is WaitCode.NO_GPU_IN_ACCOUNT:
            account_need += topo.gpus(e.model)
    regions_before, account_before = frees_at(topo, containers, before, ends)
    regions_after, account_after = frees_at(topo, containers, after, ends)
    for name, need in region_need.items():
        assert regions_after[name][:need] == regions_before[name][:need], name
    assert account_after[:account_need] == account_before[:account_need]
