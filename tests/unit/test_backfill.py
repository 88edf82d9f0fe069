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
# never makes a head that waits for a GPU start later. The heads take the GPUs as they free,
# oldest first: each needs its region's and (when the account's limit can bind) the
# account's GPUs freed so far to cover its own and the older heads'. The instants that
# gives each head, projected from the ledger after the round, are no later with backfill.


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
        room = regions[region].gpu_limit - used[region]
        if gpus > room or sum(used.values()) + gpus > topo.gpu_limit:
            continue
        used[region] += gpus
        kind = draw(st.sampled_from(["idle", "idle", "busy", "orphan"]))
        cid = f"c{n}"
        if kind == "busy":
            containers.append(Container(cid, f"p-{region}", model, region, gpus, (f"x{n}",)))
            ends[cid] = NOW + draw(st.integers(1, 60))
        else:
            until = NOW + draw(st.integers(1, int(SCALEDOWN)))
            orphan = kind == "orphan"
            containers.append(
                Container(cid, f"p-{region}", model, region, gpus, warm_until=until, orphan=orphan)
            )
    queued = [
        execution(seq, draw(st.sampled_from(MODELS)), draw(st.sampled_from(names)))
        for seq in range(1, draw(st.integers(1, 10)) + 1)
    ]
    return topo, containers, ends, queued


def head_starts(
    topo: Topology,
    containers: list[Container],
    decision: Decision,
    ends: dict[str, float],
    heads: list[Execution],
) -> dict[str, float]:
    """When each head would start after the round, if from then on only GPUs freeing moved:
    idle containers free as they expire, busy ones at their call's end plus the scaledown,
    those a call of this round holds never (as far as this round knows). At each instant the
    heads go oldest first, as the policy has them: one starts when its region and the
    account have its GPUs free, and one that cannot keeps younger heads of its region from
    opening, or of every region when it is the account's limit that stops it."""
    after = {c.id: c for c in containers}
    for admission in decision.admissions:
        after[admission.container.id] = admission.container
    newly_busy = {a.container.id for a in decision.admissions}
    free = {r: topo.regions[r].gpu_limit for r in topo.regions}
    free_account = topo.gpu_limit
    freeing: list[tuple[float, str, int]] = []
    for c in ledger.held(after.values(), NOW):
        free[c.region] -= c.gpus
        free_account -= c.gpus
        if c.id not in newly_busy:
            at = ends[c.id] + SCALEDOWN if c.in_flight else c.warm_until
            freeing.append((at, c.region, c.gpus))
    starts: dict[str, float] = {}
    for at in sorted({NOW, *(at for at, _, _ in freeing)}):
        for when, region, gpus in freeing:
            if when == at:
                free[region] += gpus
                free_account += gpus
        blocked: set[str] = set()
        account_blocked = False
        for e in heads:
            if e.id in starts:
                continue
            gpus = topo.gpus(e.model)
            region_fits = free[e.region] >= gpus
            account_fits = free_account >= gpus
            if region_fits and account_fits and e.region not in blocked and not account_blocked:
                starts[e.id] = at
                free[e.region] -= gpus
                free_account -= gpus
                continue
            blocked.add(e.region)
            if region_fits and not account_fits:
                account_blocked = True
    return {e.id: starts.get(e.id, math.inf) for e in heads}


@settings(max_examples=400, deadline=None)
@given(situations())
def test_backfill_never_makes_a_head_waiting_for_a_gpu_start_later(
    situation: tuple[Topology, list[Container], dict[str, float], list[Execution]],
) -> None:
    topo, containers, ends, queued = situation
    note(f"{topo.gpu_limit=} {topo.regions=} {topo.models=}\n{containers=}\n{ends=}")
    before = decide(queued, containers, replace(topo, backfill=False), NOW)
    after = decide(queued, containers, topo, NOW)
    assert after == decide_indexed(QueueIndex(queued), containers, topo, NOW)
    # Backfill only adds: what started before still starts.
    started_before = {a.execution.id for a in before.admissions}
    assert started_before <= {a.execution.id for a in after.admissions}
    # The heads waiting for a GPU: looked at, left waiting, with no container of their model.
    up = {(c.region, c.model) for c in containers if not c.orphan}
    up |= {(a.container.region, a.container.model) for a in before.admissions}
    heads = [e for e in queued if e.id in before.waits.executions and (e.region, e.model) not in up]
    note(f"heads={[e.id for e in heads]}")
    with_backfill = head_starts(topo, containers, after, ends, heads)
    without = head_starts(topo, containers, before, ends, heads)
    assert all(with_backfill[e.id] <= without[e.id] for e in heads), (with_backfill, without)
