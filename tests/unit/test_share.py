"""Handing out the account's free GPUs once every lane has a container (policy.Share), and
the planner that picks the rule by running the queue forward (simulate.Planner)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hybrid_router.core.model import Job, WaitCode
from hybrid_router.core.policy import Share, ShareRule, decide
from hybrid_router.core.simulate import Timings, simulate

from .test_policy import busy, execution, topology

CALL_S = {"a": 1.0, "b": 100.0, "c": 10.0}


def share(rule: ShareRule, freed: dict[str, int] | None = None) -> Share:
    return Share(rule, lambda region, model: CALL_S[model], freed or {})


def account_binds():
    # Two regions of 4 GPUs under an account of 3: each region has a container up (2 held),
    # so one GPU of the account is free.
    return topology(regions=("US", "EU"), region_limit=4, global_limit=3)


def queue() -> list:
    # US: ten quick calls of "a", queued first; EU: two long calls of "b".
    us = [execution(n, "a", "US") for n in range(1, 11)]
    eu = [execution(n, "b", "EU") for n in (11, 12)]
    return us + eu


UP = [busy("a", "e0", region="US"), busy("b", "e10", region="EU")]


def admitted(rule: ShareRule | None, freed: dict[str, int] | None = None) -> list[str]:
    rules = None if rule is None else share(rule, freed)
    decision = decide(queue(), UP, account_binds(), 100.0, share=rules)
    return [a.execution.id for a in decision.admissions]


def test_without_a_share_the_oldest_execution_takes_the_free_gpu() -> None:
    assert admitted(None) == ["e1"]
    assert admitted(ShareRule.OLDEST) == ["e1"]


def test_by_lane_work_it_goes_where_the_most_work_waits_per_container() -> None:
    # US: 10 x 1 s on one container; EU: 2 x 100 s on one. EU's second call goes now.
    assert admitted(ShareRule.LANE_WORK) == ["e11"]
    decision = decide(queue(), UP, account_binds(), 100.0, share=share(ShareRule.LANE_WORK))
    wait = decision.waits.of(queue()[0])
    assert wait is not None and wait.code is WaitCode.BEHIND_CONTAINER


def test_by_reclaim_a_freed_gpu_goes_back_to_its_region_first() -> None:
    assert admitted(ShareRule.RECLAIM, freed={"US": 1}) == ["e1"]
    assert admitted(ShareRule.RECLAIM) == ["e11"]  # nothing freed: by lane work


def test_a_lane_with_no_container_up_is_served_as_without_a_share() -> None:
    # EU's "c" has none up: first containers first, whatever the rule.
    queued = [*queue(), execution(13, "c", "EU")]
    for rule in ShareRule:
        decision = decide(queued, UP, account_binds(), 100.0, share=share(rule))
        assert [a.execution.id for a in decision.admissions] == ["e13"]


def test_where_only_the_regions_can_bind_a_share_changes_nothing() -> None:
    topo = replace(account_binds(), gpu_limit=8)
    for rule in ShareRule:
        decision = decide(queue(), UP, topo, 100.0, share=share(rule))
        assert decision == decide(queue(), UP, topo, 100.0)


TIMINGS = Timings({"a": 35.0, "b": 155.0, "c": 40.0}, cold_start_s=40.0)


def beacon(jobs: int) -> list:
    return [
        (0.0, Job(f"job{n}", ("a", "b", "c"), ("US", "EU", "ASIA"), ("q1", "q2", "q3")))
        for n in range(jobs)
    ]


def three_regions(account: int, caps: int):
    topo = topology(regions=("US", "EU", "ASIA"), region_limit=caps, global_limit=account)
    providers = {name: replace(p, scaledown_window_s=120.0) for name, p in topo.providers.items()}
    return replace(topo, providers=providers)


@pytest.mark.parametrize(("account", "caps"), [(10, 4), (10, 10), (6, 3), (20, 8)])
def test_the_planned_schedule_never_ends_later_than_the_oldest_first_one(
    account: int, caps: int
) -> None:
    topo = three_regions(account, caps)
    planned = simulate(beacon(6), topo, TIMINGS)
    oldest = simulate(beacon(6), replace(topo, planned_share=False), TIMINGS)
    assert planned.makespan_s <= oldest.makespan_s
    assert planned.drained


def test_the_planner_beats_the_oldest_first_rule_where_only_the_account_binds() -> None:
    # The scheduling benchmark's case: the oldest-first rule takes 1.068x of the bound.
    topo = three_regions(10, 10)
    planned = simulate(beacon(20), topo, TIMINGS)
    today = simulate(beacon(20), replace(topo, planned_share=False), TIMINGS)
    assert planned.makespan_s < today.makespan_s
    assert planned.ratio <= 1.05


def test_only_lanes_of_their_region_s_highest_priority_get_the_free_gpus() -> None:
    topo = topology(regions=("US", "EU"), region_limit=4, global_limit=4)
    up = [busy("a", "e0"), busy("b", "e9"), busy("c", "e20", region="EU")]
    # US: "a" at priority 5 (1 s calls), "b" at 0 (100 s calls: more work per container).
    queued = [
        execution(1, "a", priority=5),
        execution(2, "a", priority=5),
        execution(3, "b"),
        execution(4, "b"),
    ]
    decision = decide(queued, up, topo, 100.0, share=share(ShareRule.LANE_WORK))
    assert [a.execution.id for a in decision.admissions] == ["e1"]
