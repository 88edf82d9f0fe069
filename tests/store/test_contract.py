"""What every store promises the router: run against each backend by tests/store/conftest.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Sequence
from dataclasses import MISSING, fields, replace

from hybrid_router.core.model import (
    Container,
    Execution,
    ExecutionState,
    Failure,
    FailureKind,
    Job,
    JobKey,
    RegionMode,
)
from hybrid_router.errors import DuplicateExecution, RegionDraining
from hybrid_router.store.base import Recorded, Store, Submitted

from .conftest import StoreFactory

QUEUED = ExecutionState.QUEUED
RUNNING = ExecutionState.RUNNING
SUCCEEDED = ExecutionState.SUCCEEDED
CANCELLED = ExecutionState.CANCELLED


def make_job(
    job_id: str = "j1",
    *,
    owner: str = "alice",
    created_at: float = 100.0,
    models: tuple[str, ...] = ("llama3.2-1b", "mistral-7b"),
    regions: tuple[str, ...] = ("US",),
    questions: tuple[str, ...] = ("Is the sky blue?", "Who wrote Hamlet?"),
) -> Job:
    return Job(
        id=job_id,
        models=models,
        regions=regions,
        questions=questions,
        owner=owner,
        priority=2,
        temperature=0.3,
        max_tokens=128,
        max_attempts=4,
        created_at=created_at,
        deadline_s=3600.25,
    )


def key(job_id: str, owner: str = "alice") -> JobKey:
    """The key of a job, by default one of make_job's (alice's)."""
    return JobKey(owner, job_id)


async def submit(store: Store, job: Job) -> list[Execution]:
    submitted = await store.submit_job(job, job.expand())
    assert (submitted.job, submitted.created) == (job, True)
    stored = await store.executions_of(job.key)
    # What it returns is what it stored, seqs included.
    assert list(submitted.executions) == stored
    return stored


def pairs(outcomes: Sequence[Submitted | BaseException]) -> list[object]:
    """Each submission's (job, created), or the exception it raised."""
    return [(o.job, o.created) if isinstance(o, Submitted) else o for o in outcomes]


def container_for(
    execution: Execution,
    cid: str = "c1",
    *,
    in_flight: tuple[str, ...] | None = None,
    warm_until: float = 0.0,
) -> Container:
    """The container `execution` runs on (busy with it unless `in_flight` says otherwise)."""
    return Container(
        id=cid,
        provider="modal-us",
        model=execution.model,
        region=execution.region,
        gpus=1,
        in_flight=(execution.id,) if in_flight is None else in_flight,
        warm_until=warm_until,
    )


def started(execution: Execution, cid: str = "c1", at: float = 110.0) -> Execution:
    return replace(
        execution,
        state=RUNNING,
        attempts=execution.attempts + 1,
        started_at=at,
        provider="modal-us",
        container_id=cid,
    )


async def admitted(store: Store, execution: Execution, cid: str = "c1") -> Execution:
    running = started(execution, cid)
    recorded = await store.admit([running], [container_for(execution, cid)])
    assert recorded == Recorded(frozenset({running.id}))
    return running


def every_field(execution: Execution) -> Execution:
    """`execution` with every field away from its default, so a store that drops one fails."""
    return replace(
        execution,
        attempts=2,
        not_before=111.125,
        deadline_at=3700.5,
        waits=3,
        started_at=108.25,
        finished_at=109.75,
        provider="modal-eu",
        container_id="c-old",
        response="an earlier answer",
        inference_time=12.5,
        tokens_generated=42,
        prompt_tokens=17,
        error=Failure("PROVIDER_BUSY", "429 from provider", FailureKind.CAPACITY),
    )


def away_from_defaults(value: Job | Execution) -> list[str]:
    """The fields of `value` still at their default."""
    return [
        f.name
        for f in fields(value)
        if f.default is not MISSING and getattr(value, f.name) == f.default
    ]


def zeros(**counts: int) -> dict[ExecutionState, int]:
    result = dict.fromkeys(ExecutionState, 0)
    result.update({ExecutionState(k): v for k, v in counts.items()})
    return result


# Submission and reading back


async def test_submit_then_read_back_in_submission_order(store: Store) -> None:
    job = make_job()
    executions = await submit(store, job)

    assert await store.get_job(job.key) == job
    assert await store.get_job(key("nope")) is None
    expected = job.expand()
    assert [e.id for e in executions] == [e.id for e in expected]
    seqs = [e.seq for e in executions]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and seqs[0] > 0
    # Every field comes back as given, seq added by the store.
    assert executions == [replace(e, seq=s) for e, s in zip(expected, seqs, strict=True)]
    assert await store.queued() == executions
    assert await store.running() == []
    assert await store.executions_of(key("nope")) == []


async def test_every_field_of_jobs_and_executions_round_trips(store: Store) -> None:
    job = make_job()
    assert away_from_defaults(job) == []
    given = [every_field(e) for e in job.expand()]
    assert away_from_defaults(replace(given[0], seq=1)) == ["state"]

    assert (await store.submit_job(job, given))[:2] == (job, True)

    assert await store.get_job(job.key) == job
    assert await store.job_with_counts(job.key) == (job, zeros(queued=4))
    assert await store.list_jobs() == [(job, zeros(queued=4))]
    stored = await store.executions_of(job.key)
    assert [replace(e, seq=0) for e in stored] == given
    assert await store.queued() == stored
    running = started(stored[0], "c1")
    await store.admit([running], [container_for(running, "c1")])
    done = replace(running, state=ExecutionState.FAILED, response=None)
    assert (await store.finish([(done, "c1")], [])).executions == {done.id}
    assert (await store.executions_of(job.key))[0] == done


async def test_seq_keeps_increasing_across_jobs_and_reopen(make_store: StoreFactory) -> None:
    first = make_store()
    await first.open()
    one = await submit(first, make_job("j1"))
    two = await submit(first, make_job("j2", created_at=101.0))
    assert max(e.seq for e in one) < min(e.seq for e in two)
    await first.close()

    again = make_store()
    await again.open()
    assert await again.executions_of(key("j1")) == one
    three = await submit(again, make_job("j3", created_at=102.0))
    assert max(e.seq for e in two) < min(e.seq for e in three)
    assert [e.id for e in await again.queued()] == [e.id for e in one + two + three]


async def test_submit_with_an_existing_id_returns_the_stored_job_and_writes_nothing(
    store: Store,
) -> None:
    job = make_job()
    executions = await submit(store, job)

    other = make_job(questions=("something else",), created_at=999.0)
    submitted = await store.submit_job(other, other.expand())

    assert submitted == (job, False, ())
    # The same job again (a client retrying its POST) gets the stored one back, equal to it.
    assert (await store.submit_job(job, job.expand()))[:2] == (job, False)
    assert await store.executions_of(job.key) == executions
    assert await store.queued() == executions
    assert [j for j, _ in await store.list_jobs()] == [job]


async def test_two_owners_with_one_job_id_each_have_their_own_job(store: Store) -> None:
    alices = make_job("same")
    bobs = make_job("same", owner="bob", models=("m",), created_at=101.0)
    mine = await submit(store, alices)
    # Not alice's job again, nor a conflict with it: bob's own.
    theirs = await submit(store, bobs)
    assert not {e.id for e in mine} & {e.id for e in theirs}

    assert await store.get_job(alices.key) == alices
    assert await store.get_job(bobs.key) == bobs
    assert await store.get_job(key("same", "carol")) is None
    assert await store.executions_of(alices.key) == mine
    assert await store.executions_of(bobs.key) == theirs
    assert await store.job_with_counts(bobs.key) == (bobs, zeros(queued=2))
    assert await store.job_owners("same") == ["alice", "bob"]
    assert await store.job_owners("nope") == []
    # Admins list both, each with its owner; an owner lists their own.
    assert await store.list_jobs() == [(bobs, zeros(queued=2)), (alices, zeros(queued=4))]
    assert await store.list_jobs(owner="bob") == [(bobs, zeros(queued=2))]
    # Each one's replay finds its own.
    assert (await store.submit_job(bobs, bobs.expand()))[:2] == (bobs, False)

    # Bob's cancellation and alice's finishing touch their own job only.
    cancelled = await store.cancel_queued(bobs.key, now=110.0)
    assert [e.id for e in cancelled] == [e.id for e in theirs]
    assert await store.job_with_counts(alices.key) == (alices, zeros(queued=4))
    late = [replace(e, state=ExecutionState.EXPIRED, finished_at=120.0) for e in mine]
    recorded = await store.expire(late)
    assert recorded.finished_jobs == {alices.key}
    assert await store.job_with_counts(bobs.key) == (bobs, zeros(cancelled=2))
    assert await store.job_with_counts(alices.key) == (alices, zeros(expired=4))


# Admission


async def test_admit_records_the_running_execution_and_its_container(store: Store) -> None:
    first, *rest = await submit(store, make_job())
    running = started(first)
    container = container_for(first)

    assert await store.admit([running], [container]) == Recorded(frozenset({first.id}))

    assert await store.running() == [running]
    assert await store.queued() == rest
    assert await store.containers() == [container]


async def test_admit_writes_a_whole_round_and_keeps_refused_calls_out_of_the_ledger(
    store: Store,
) -> None:
    a, b, c, d = await submit(store, make_job("j1"))
    (other,) = await submit(store, make_job("j2", questions=("q",), models=("m",)))
    earlier = await admitted(store, d, "c2")
    await store.cancel_queued(key("j2"), now=105.0)  # a cancellation races the round
    # c1 takes two calls, one of which lost its race; c2 was already busy with `earlier`.
    shared = Container("c1", "modal-us", "m", "US", 1, (a.id, other.id), 1712345678.123456)
    busy = Container("c2", "modal-us", "m", "US", 1, (earlier.id, b.id), 0.1 + 0.2)
    fresh = Container("c3", "modal-us", "m", "US", 2, (c.id,), 1e12 + 0.125, orphan=True)
    round_ = [started(a, "c1"), started(other, "c1"), started(b, "c2"), started(c, "c3")]

    recorded = await store.admit(round_, [shared, busy, fresh])

    assert recorded == Recorded(frozenset({a.id, b.id, c.id}))
    assert sorted(await store.containers(), key=lambda k: k.id) == [
        replace(shared, in_flight=(a.id,)),
        busy,
        fresh,
    ]
    assert {e.id for e in await store.running()} == {a.id, b.id, c.id, earlier.id}
    assert (await store.executions_of(key("j2")))[0].state is CANCELLED
    assert await store.admit([], []) == Recorded()


async def test_a_refused_call_leaves_a_busy_container_with_its_other_calls_in_order(
    store: Store,
) -> None:
    a, b, c, d = await submit(store, make_job("j1"))
    (other,) = await submit(store, make_job("j2", questions=("q",), models=("m",)))
    earlier = await admitted(store, d, "c1")
    await store.cancel_queued(key("j2"), now=105.0)
    calls = (earlier.id, a.id, other.id, b.id)
    busy = Container("c1", "modal-us", "m", "US", 1, calls, 1712345678.123456)
    round_ = [started(a, "c1"), started(other, "c1"), started(b, "c1")]

    recorded = await store.admit(round_, [busy])

    assert recorded == Recorded(frozenset({a.id, b.id}))
    assert await store.containers() == [replace(busy, in_flight=(earlier.id, a.id, b.id))]
    assert await store.admit([started(c, "c1")], [replace(busy, in_flight=(c.id,))]) == Recorded(
        frozenset({c.id})
    )
    assert await store.containers() == [replace(busy, in_flight=(c.id,))]


async def test_a_cancelled_execution_cannot_be_admitted(store: Store) -> None:
    first, *_ = await submit(store, make_job())
    await store.cancel_queued(key("j1"), now=105.0)

    container = container_for(first)
    assert await store.admit([started(first)], [container]) == Recorded()

    assert await store.running() == []
    # The leader's container row is kept, without the call no one will make.
    assert await store.containers() == [replace(container, in_flight=())]
    assert (await store.executions_of(key("j1")))[0].state is CANCELLED


async def test_only_one_of_concurrent_admissions_of_one_execution_wins(store: Store) -> None:
    first, *_ = await submit(store, make_job())
    results = await asyncio.gather(
        *(store.admit([started(first, f"c{i}")], [container_for(first, f"c{i}")]) for i in range(5))
    )

    wins = [i for i, r in enumerate(results) if r.executions == {first.id}]
    assert len(wins) == 1 and all(r == Recorded() for i, r in enumerate(results) if i != wins[0])
    winner = f"c{wins[0]}"
    busy = [c.id for c in await store.containers() if c.in_flight]
    assert busy == [winner]
    assert [e.container_id for e in await store.running()] == [winner]


# Finishing


async def test_finish_records_the_outcome_and_the_warm_container(store: Store) -> None:
    first, *_ = await submit(store, make_job())
    running = await admitted(store, first)
    done = replace(
        running, state=SUCCEEDED, finished_at=150.5, response="Yes.", inference_time=40.25
    )
    warm = container_for(first, in_flight=(), warm_until=1712345678.123456)

    assert await store.finish([(done, "c1")], [warm]) == Recorded(frozenset({first.id}))

    assert (await store.executions_of(key("j1")))[0] == done
    assert await store.running() == []
    assert await store.containers() == [warm]


async def test_finish_can_delete_or_replace_the_ledger_row(store: Store) -> None:
    first, second, *_ = await submit(store, make_job())
    one = await admitted(store, first, "c1")
    two = await admitted(store, second, "c2")
    replacement = container_for(first, "c3", in_flight=(), warm_until=200.0)

    recorded = await store.finish(
        [(replace(one, state=SUCCEEDED), "c1"), (replace(two, state=SUCCEEDED), "c2")],
        [replacement],
        removed=["c1", "c2"],
    )

    assert recorded.executions == {first.id, second.id}
    assert await store.containers() == [replacement]


async def test_finish_group_commits_outcomes_and_names_the_jobs_it_finished(
    store: Store,
) -> None:
    (solo,) = await submit(store, make_job("solo", models=("m",), questions=("q",)))
    pair = await submit(store, make_job("pair", models=("m",), questions=("a", "b")))
    (tail,) = await submit(store, make_job("tail", models=("m",), questions=("q",)))
    running = [await admitted(store, e, f"c{i}") for i, e in enumerate([solo, *pair, tail])]
    failure = Failure("PROVIDER_ERROR", "502 from provider", FailureKind.TRANSIENT)
    retry = replace(running[3], state=QUEUED, container_id=None, started_at=None, error=failure)

    recorded = await store.finish(
        [
            (replace(running[0], state=SUCCEEDED, response="yes"), "c0"),
            (replace(running[1], state=SUCCEEDED), "c1"),
            (replace(running[2], state=ExecutionState.FAILED, error=failure), "c2"),
            (retry, "c3"),  # queued again: its job is not finished
        ],
        [],
        removed=["c0", "c1", "c2", "c3"],
    )

    assert recorded == Recorded(
        frozenset(e.id for e in running), finished_jobs=frozenset({key("solo"), key("pair")})
    )
    assert await store.job_with_counts(key("pair")) == (
        make_job("pair", models=("m",), questions=("a", "b")),
        zeros(succeeded=1, failed=1),
    )
    assert await store.queued() == [retry]
    assert await store.containers() == []


async def test_a_retry_goes_back_to_its_place_at_the_front(store: Store) -> None:
    first, *rest = await submit(store, make_job())
    running = await admitted(store, first)
    retry = replace(
        running,
        state=QUEUED,
        not_before=130.0,
        started_at=None,
        container_id=None,
        error=Failure("PROVIDER_ERROR", "502 from provider", FailureKind.TRANSIENT),
    )
    warm = container_for(first, in_flight=(), warm_until=250.0)

    assert (await store.finish([(retry, "c1")], [warm])).executions == {first.id}

    queued = await store.queued()
    assert queued == [retry, *rest]
    assert queued[0].seq == first.seq
    assert queued[0].error == Failure("PROVIDER_ERROR", "502 from provider", FailureKind.TRANSIENT)


async def test_finish_of_an_execution_that_is_not_running_changes_nothing(store: Store) -> None:
    first, second, *_ = await submit(store, make_job())
    running = await admitted(store, first)

    # Never admitted.
    assert await store.finish([(replace(second, state=SUCCEEDED), "c1")], []) == Recorded()
    # Running, but on another container than the caller thinks (a stale outcome).
    assert await store.finish([(replace(running, state=SUCCEEDED), "c9")], []) == Recorded()
    assert await store.running() == [running]
    # Already finished: a second outcome for the same run is refused.
    done = replace(running, state=SUCCEEDED, response="ok")
    assert (await store.finish([(done, "c1")], [])).executions == {first.id}
    again = replace(running, state=ExecutionState.FAILED)
    assert await store.finish([(again, "c1")], []) == Recorded()

    stored = await store.executions_of(key("j1"))
    assert stored[0] == done
    assert stored[1] == second
    assert (await store.job_with_counts(key("j1"))) == (make_job(), zeros(queued=3, succeeded=1))


async def test_finish_writes_the_ledger_whatever_the_compare_and_sets_found(
    store: Store,
) -> None:
    first, *_ = await submit(store, make_job())
    await admitted(store, first, "c1")
    await store.cancel_queued(key("j1"), now=120.0)
    warm = container_for(first, "c2", in_flight=(), warm_until=300.5)

    stale = replace(first, state=SUCCEEDED)  # never running on c7
    assert await store.finish([(stale, "c7")], [warm], removed=["c1"]) == Recorded()

    assert await store.containers() == [warm]


# Cancellation


async def test_cancel_queued_touches_only_that_jobs_queued_executions(store: Store) -> None:
    first, *rest = await submit(store, make_job("j1"))
    others = await submit(store, make_job("j2", created_at=101.0))
    running = await admitted(store, first)

    cancelled = await store.cancel_queued(key("j1"), now=120.0)

    assert cancelled == [replace(e, state=CANCELLED, finished_at=120.0) for e in rest]
    assert await store.executions_of(key("j1")) == [running, *cancelled]
    assert await store.executions_of(key("j2")) == others
    assert await store.queued() == others
    assert await store.cancel_queued(key("j1"), now=121.0) == []
    assert await store.cancel_queued(key("nope"), now=121.0) == []


# The container ledger


async def test_containers_round_trip_exactly(store: Store) -> None:
    busy = Container("c1", "modal-us", "mistral-7b", "US", 2, ("j1:0:a:US", "j1:1:a:US"), 0.0)
    warm = Container("c2", "modal-eu", "llama3.2-1b", "EU", 1, (), 0.1 + 0.2)
    orphan = Container("c3", "modal-us", "qwen2.5-1.5b", "US", 1, ("x",), 1e12 + 0.125, True)

    await store.save_containers([busy, warm, orphan])
    assert sorted(await store.containers(), key=lambda c: c.id) == [busy, warm, orphan]

    cooled = replace(busy, in_flight=(), warm_until=1234.5678)
    await store.save_containers([cooled], removed=["c2"])
    assert sorted(await store.containers(), key=lambda c: c.id) == [cooled, orphan]

    await store.save_containers([], removed=["c1", "c3", "never-existed"])
    assert await store.containers() == []


# Crash recovery


async def test_requeue_puts_running_executions_back_as_given(store: Store) -> None:
    first, second, *rest = await submit(store, make_job())
    one = await admitted(store, first, "c1")
    two = await admitted(store, second, "c2")
    done = replace(two, state=SUCCEEDED)
    assert (await store.finish([(done, "c2")], [], removed=["c2"])).executions == {two.id}

    back = replace(one, state=QUEUED, started_at=None, container_id=None, not_before=0.0)
    # The finished one is not running any more, so requeue must leave it alone.
    await store.requeue([back, replace(two, state=QUEUED)])

    assert await store.running() == []
    assert await store.queued() == [back, *rest]
    assert (await store.executions_of(key("j1")))[1] == done


# Counts and listings


async def test_region_counts(store: Store) -> None:
    assert await store.region_counts() == {}
    job = make_job(models=("m",), regions=("US", "EU"), questions=("a", "b", "c"))
    executions = await submit(store, job)
    us = [e for e in executions if e.region == "US"]
    await admitted(store, us[0])
    await store.cancel_queued(key("j1"), now=101.0)

    assert await store.region_counts() == {
        "US": zeros(running=1, cancelled=2),
        "EU": zeros(cancelled=3),
    }


async def test_list_jobs_newest_first_with_counts_owner_filter_and_pages(store: Store) -> None:
    assert await store.list_jobs() == []
    old = make_job("old", created_at=1.0)
    mid = make_job("mid", created_at=2.0, owner="bob")
    new = make_job("new", created_at=3.0)
    tie = make_job("tie", created_at=2.0)  # same instant as mid, submitted later
    for job in (old, mid, new, tie):
        await submit(store, job)
    first, *_ = await store.executions_of(key("mid", "bob"))
    await admitted(store, first)
    await store.cancel_queued(key("old"), now=5.0)

    listed = await store.list_jobs()
    assert [j.id for j, _ in listed] == ["new", "tie", "mid", "old"]
    assert listed[0] == (new, zeros(queued=4))
    assert listed[2] == (mid, zeros(queued=3, running=1))
    assert listed[3] == (old, zeros(cancelled=4))

    assert [j.id for j, _ in await store.list_jobs(limit=2)] == ["new", "tie"]
    assert [j.id for j, _ in await store.list_jobs(limit=2, offset=2)] == ["mid", "old"]
    assert await store.list_jobs(offset=4) == []
    assert [j.id for j, _ in await store.list_jobs(owner="alice")] == ["new", "tie", "old"]
    assert await store.list_jobs(owner="bob") == [(mid, zeros(queued=3, running=1))]
    assert await store.list_jobs(owner="carol") == []


async def test_a_job_without_executions_is_listed_with_zero_counts(store: Store) -> None:
    job = make_job(questions=())
    assert (await store.submit_job(job, []))[:2] == (job, True)
    assert await store.list_jobs() == [(job, zeros())]
    assert await store.job_with_counts(job.key) == (job, zeros())


async def test_job_with_counts_follows_every_kind_of_write(store: Store) -> None:
    assert await store.job_with_counts(key("nope")) is None
    job = make_job(models=("m",), questions=("a", "b", "c", "d", "e"))
    a, b, c, d, e = await submit(store, job)
    assert await store.job_with_counts(key("j1")) == (job, zeros(queued=5))

    ra, rb = await admitted(store, a, "c1"), await admitted(store, b, "c2")
    await store.finish([(replace(ra, state=SUCCEEDED), "c1")], [])
    await store.expire([replace(c, state=ExecutionState.EXPIRED)])
    await store.requeue([replace(rb, state=QUEUED, container_id=None)])
    assert await store.job_with_counts(key("j1")) == (job, zeros(queued=3, succeeded=1, expired=1))

    await store.cancel_queued(key("j1"), now=130.0)
    assert await store.job_with_counts(key("j1")) == (
        job,
        zeros(succeeded=1, expired=1, cancelled=3),
    )
    listed = await store.list_jobs()
    assert listed == [(job, zeros(succeeded=1, expired=1, cancelled=3))]


async def test_executions_of_a_job_a_page_at_a_time(store: Store) -> None:
    job = make_job(models=("m",), questions=tuple(f"q{i}" for i in range(7)))
    everything = await submit(store, job)

    assert len(everything) == 7
    assert await store.executions_of(key("j1"), limit=3) == everything[:3]
    assert await store.executions_of(key("j1"), offset=3, limit=3) == everything[3:6]
    assert await store.executions_of(key("j1"), offset=6, limit=3) == everything[6:]
    assert await store.executions_of(key("j1"), offset=5) == everything[5:]
    assert await store.executions_of(key("j1"), offset=7) == []
    assert await store.executions_of(key("j1"), limit=0) == []


# Queue sizes and positions


async def test_queue_sizes_count_queued_executions_per_region(store: Store) -> None:
    assert await store.queue_sizes() == {}
    job = make_job(models=("m",), regions=("US", "EU"), questions=("a", "b", "c"))
    executions = await submit(store, job)
    assert await store.queue_sizes() == {"US": 3, "EU": 3}

    us = [e for e in executions if e.region == "US"]
    running = await admitted(store, us[0])
    assert await store.queue_sizes() == {"US": 2, "EU": 3}
    await store.cancel_queued(key("j1"), now=101.0)
    assert await store.queue_sizes() == {}
    retry = replace(running, state=QUEUED, container_id=None)
    assert (await store.finish([(retry, "c1")], [], removed=["c1"])).executions == {retry.id}
    assert await store.queue_sizes() == {"US": 1}


async def test_position_is_priority_then_queue_order_within_the_region(store: Store) -> None:
    low = replace(
        make_job("low", models=("m",), regions=("US", "EU"), questions=("a", "b")), priority=0
    )
    high = replace(
        make_job("high", models=("m",), regions=("US",), questions=("c",), created_at=101.0),
        priority=5,
    )
    low_us_a, low_eu_a, low_us_b, low_eu_b = await submit(store, low)
    (high_us,) = await submit(store, high)

    async def places() -> list[int | None]:
        order = (high_us, low_us_a, low_us_b, low_eu_a, low_eu_b)
        found = await store.positions(order)
        assert set(found) <= {e.id for e in order}
        return [found.get(e.id) for e in order]

    assert await places() == [1, 2, 3, 1, 2]

    # Running: no place; the others move up. A retry goes back to its own place.
    running = await admitted(store, low_us_a)
    assert await places() == [1, None, 2, 1, 2]
    retry = replace(running, state=QUEUED, container_id=None, not_before=500.0)
    assert (await store.finish([(retry, "c1")], [])).executions == {retry.id}
    assert await places() == [1, 2, 3, 1, 2]

    await store.cancel_queued(key("high"), now=102.0)
    assert await places() == [None, 1, 2, 1, 2]
    unknown = replace(low_us_a, id="nope")
    assert await store.positions([unknown]) == {}
    assert await store.positions([]) == {}


async def test_positions_of_any_subset_agree_with_the_queue_order(store: Store) -> None:
    for n, priority in enumerate((0, 5, 2, 5, 0)):
        job = make_job(f"p{n}", models=("a", "b"), regions=("US", "EU"), questions=("x", "y", "z"))
        await submit(store, replace(job, priority=priority))
    for i, e in enumerate((await store.queued())[::7]):
        await admitted(store, e, f"c{i}")
    await store.cancel_queued(key("p3"), now=200.0)
    queued = await store.queued()
    expected = {}
    for region in ("US", "EU"):
        order = sorted(
            (e for e in queued if e.region == region), key=lambda e: (-e.priority, e.seq)
        )
        expected.update({e.id: place for place, e in enumerate(order, start=1)})

    for subset in (queued, queued[::3], queued[1::4], queued[-1:], queued[::-1]):
        assert await store.positions(subset) == {e.id: expected[e.id] for e in subset}


# Concurrent submissions (the SQLite store commits them in batches)


def small_job(job_id: str, i: int = 0) -> Job:
    return make_job(job_id, models=("m",), questions=("a", "b"), created_at=200.0 + i)


async def test_concurrent_submissions_are_all_stored_and_survive_reopen(
    make_store: StoreFactory,
) -> None:
    first = make_store()
    await first.open()
    # 80: the Redis store's client pool refuses a call beyond its 100 connections.
    jobs = [small_job(f"many{i}", i) for i in range(80)]

    outcomes = await asyncio.gather(*(first.submit_job(j, j.expand()) for j in jobs))

    assert pairs(outcomes) == [(j, True) for j in jobs]
    stored = {j.id: await first.executions_of(j.key) for j in jobs}
    for job in jobs:
        assert [e.id for e in stored[job.id]] == [e.id for e in job.expand()]
        assert stored[job.id][0].seq < stored[job.id][1].seq
    seqs = [e.seq for executions in stored.values() for e in executions]
    assert len(set(seqs)) == len(seqs) == 160
    assert await first.queue_sizes() == {"US": 160}
    await first.close()

    again = make_store()
    await again.open()
    assert {j.id: await again.executions_of(j.key) for j in jobs} == stored
    assert {j for j, _ in await again.list_jobs(limit=-1)} == set(jobs)


async def test_concurrent_submissions_return_in_seq_order(store: Store) -> None:
    # The leader indexes submissions as they return: one returning before an earlier seq
    # would let a later execution start first in its lane.
    returned: list[int] = []

    async def submit_and_note(job: Job) -> None:
        submitted = await store.submit_job(job, job.expand())
        returned.extend(e.seq for e in submitted.executions)

    await asyncio.gather(*(submit_and_note(small_job(f"o{i}", i)) for i in range(60)))

    assert len(returned) == 120
    assert returned == sorted(returned)


async def test_concurrent_submissions_of_one_job_create_it_once(store: Store) -> None:
    job = small_job("same")
    others = [small_job(f"other{i}", i) for i in range(10)]
    # A client retrying its POST while the first is still being written, among other jobs.
    calls = [store.submit_job(job, job.expand()) for _ in range(10)]
    calls += [store.submit_job(j, j.expand()) for j in others]

    outcomes = await asyncio.gather(*calls)

    assert sorted(o.created for o in outcomes[:10]) == [False] * 9 + [True]
    assert all(o.job == job for o in outcomes[:10])
    assert pairs(outcomes[10:]) == [(j, True) for j in others]
    assert await store.job_with_counts(job.key) == (job, zeros(queued=2))
    assert [e.id for e in await store.executions_of(job.key)] == [e.id for e in job.expand()]


async def test_a_refused_submission_leaves_the_others_written(store: Store) -> None:
    await submit(store, small_job("first"))
    clash = small_job("clash")
    # Its second execution reuses an id already stored: SQLite's UNIQUE refuses it, and
    # the Redis store checks for it.
    executions = [clash.expand()[0], small_job("first").expand()[0]]
    good = [small_job(f"good{i}", i) for i in range(6)]
    calls = [store.submit_job(j, j.expand()) for j in good[:3]]
    calls.append(store.submit_job(clash, executions))
    calls += [store.submit_job(j, j.expand()) for j in good[3:]]

    outcomes = await asyncio.gather(*calls, return_exceptions=True)

    # The store's own error, naming the id, which the API's one handler maps (409).
    assert isinstance(outcomes[3], DuplicateExecution), outcomes[3]
    assert small_job("first").expand()[0].id in outcomes[3].message
    assert pairs(outcomes[:3] + outcomes[4:]) == [(j, True) for j in good]
    assert await store.get_job(clash.key) is None
    assert await store.executions_of(clash.key) == []
    for job in good:
        assert await store.job_with_counts(job.key) == (job, zeros(queued=2))
    assert await store.queue_sizes() == {"US": 2 + 2 * len(good)}


async def test_a_draining_region_refuses_submissions_in_the_write_itself(store: Store) -> None:
    before = small_job("before")
    await submit(store, before)
    await store.set_region_mode("US", RegionMode.DRAINING)
    elsewhere = make_job("elsewhere", models=("m",), regions=("EU",), questions=("a",))
    late = [small_job(f"late{i}", i) for i in range(3)]
    calls = [store.submit_job(j, j.expand()) for j in (*late, elsewhere, before)]

    outcomes = await asyncio.gather(*calls, return_exceptions=True)

    for refused in outcomes[:3]:
        assert isinstance(refused, RegionDraining) and refused.code == "REGION_DRAINING"
        assert "'US' is draining" in refused.message
    # Another region's job goes in; one already stored is no new work (a client's retry).
    assert pairs(outcomes[3:]) == [(elsewhere, True), (before, False)]
    assert [await store.get_job(j.key) for j in late] == [None] * 3
    assert await store.queue_sizes() == {"US": 2, "EU": 1}
    await store.set_region_mode("US", RegionMode.OPEN)
    await submit(store, late[0])


async def test_a_submission_cancelled_while_waiting_leaves_the_others_whole(
    store: Store,
) -> None:
    for iterations in range(6):
        jobs = [small_job(f"c{iterations}-{i}", i) for i in range(8)]
        tasks = [asyncio.ensure_future(store.submit_job(j, j.expand())) for j in jobs]
        for _ in range(iterations):
            await asyncio.sleep(0)
        tasks[3].cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)

        assert pairs(outcomes[:3] + outcomes[4:]) == [(j, True) for j in jobs[:3] + jobs[4:]]
        assert isinstance(outcomes[3], asyncio.CancelledError) or pairs(outcomes[3:4]) == [
            (jobs[3], True)
        ]
        # The cancelled one was written whole or not at all.
        if (stored := await store.job_with_counts(jobs[3].key)) is not None:
            assert stored == (jobs[3], zeros(queued=2))
            assert len(await store.executions_of(jobs[3].key)) == 2
        else:
            assert await store.executions_of(jobs[3].key) == []

    # The store takes every kind of write again.
    executions = await submit(store, small_job("after"))
    await admitted(store, executions[0])
    assert len(await store.queued()) == sum(n for n in (await store.queue_sizes()).values())


# Durability


async def test_everything_survives_close_and_reopen(make_store: StoreFactory) -> None:
    first = make_store()
    await first.open()
    one, two, *rest = await submit(first, make_job())
    running = await admitted(first, one, "c1")
    done = replace(
        await admitted(first, two, "c2"),
        state=ExecutionState.FAILED,
        finished_at=160.0,
        error=Failure("BAD_PROMPT", "prompt too long", FailureKind.PERMANENT),
    )
    warm = container_for(two, "c2", in_flight=(), warm_until=280.0)
    assert (await first.finish([(done, "c2")], [warm])).executions == {two.id}
    orphan = Container("c9", "modal-eu", "m", "EU", 1, ("lost",), 900.0, orphan=True)
    await first.save_containers([orphan])
    before = (
        await first.list_jobs(),
        await first.executions_of(key("j1")),
        await first.containers(),
        await first.region_counts(),
        await first.job_with_counts(key("j1")),
        await first.queue_sizes(),
    )
    await first.close()

    again = make_store()
    await again.open()
    after = (
        await again.list_jobs(),
        await again.executions_of(key("j1")),
        await again.containers(),
        await again.region_counts(),
        await again.job_with_counts(key("j1")),
        await again.queue_sizes(),
    )
    assert after == before
    assert await again.running() == [running]
    assert await again.queued() == rest
    assert (await again.executions_of(key("j1")))[1].error == done.error


# The scheduler lock


async def test_only_one_store_holds_the_scheduler_lock_until_it_closes(
    make_store: StoreFactory,
) -> None:
    first = make_store()
    await first.open()
    second = make_store()
    await second.open()

    assert await first.acquire_scheduler_lock()
    assert await first.acquire_scheduler_lock()  # asking again while holding it is fine
    assert not await second.acquire_scheduler_lock()

    await first.close()
    assert await second.acquire_scheduler_lock()


async def test_expire_ends_only_executions_still_queued(store: Store) -> None:
    first, second, *_ = await submit(store, make_job())
    await admitted(store, second)
    late = [replace(e, state=ExecutionState.EXPIRED, finished_at=500.0) for e in (first, second)]
    # The running one is not touched, so the job is not finished.
    assert await store.expire(late) == Recorded(frozenset({first.id}))
    stored = {e.id: e for e in await store.executions_of(key("j1"))}
    assert stored[first.id].state is ExecutionState.EXPIRED
    assert stored[first.id].finished_at == 500.0
    assert stored[second.id].state is RUNNING
    assert first.id not in {e.id for e in await store.queued()}


async def test_expire_names_the_jobs_it_finished(store: Store) -> None:
    one = await submit(store, make_job("one", models=("m",), questions=("a", "b")))
    two = await submit(store, make_job("two", models=("m",), questions=("a", "b")))
    await admitted(store, two[0])
    late = [replace(e, state=ExecutionState.EXPIRED, finished_at=500.0) for e in one + two]

    recorded = await store.expire(late)

    written = frozenset({one[0].id, one[1].id, two[1].id})
    assert recorded == Recorded(written, frozenset({key("one")}))
    assert (await store.job_with_counts(key("one"))) == (
        make_job("one", models=("m",), questions=("a", "b")),
        zeros(expired=2),
    )
    assert await store.expire(late) == Recorded()


async def test_region_modes_are_shared_and_survive_reopen(make_store: StoreFactory) -> None:
    first = make_store()
    await first.open()
    assert await first.region_modes() == {}
    await first.set_region_mode("US", RegionMode.PAUSED)
    await first.set_region_mode("EU", RegionMode.DRAINING)
    await first.set_region_mode("EU", RegionMode.OPEN)
    await first.close()
    second = make_store()
    await second.open()
    assert await second.region_modes() == {"US": RegionMode.PAUSED, "EU": RegionMode.OPEN}


# Writes cancelled mid-flight (a client gone, a wait_for timing out)


async def cancelled_after(write: Awaitable[object], iterations: int) -> None:
    """Start `write`, let the event loop turn `iterations` times, then cancel it."""
    task = asyncio.ensure_future(write)
    for _ in range(iterations):
        await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_writes_cancelled_at_any_moment_leave_the_store_whole(store: Store) -> None:
    job = make_job(models=("m",), questions=tuple(f"q{i}" for i in range(30)))
    executions = await submit(store, job)
    for i, e in enumerate(executions):
        write = store.admit([started(e, f"c{i}")], [container_for(e, f"c{i}")])
        if i % 3 == 2:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(write, timeout=0.0001 * i)
        else:
            await cancelled_after(write, i // 3)
    for i, e in enumerate(await store.running()):
        done = replace(e, state=SUCCEEDED, response=f"answer {i}")
        warm = container_for(e, e.container_id or "", in_flight=(), warm_until=500.0 + i)
        await cancelled_after(store.finish([(done, e.container_id)], [warm]), i % 6)
    submitted = [make_job(f"late{i}", models=("m",), created_at=200.0 + i) for i in range(12)]
    for i, late in enumerate(submitted):
        await cancelled_after(store.submit_job(late, late.expand()), i)

    # The store takes writes again; this one also comes after any cancelled write that its
    # store went on with.
    again = make_job("again", models=("m",), created_at=300.0)
    assert (await store.submit_job(again, again.expand()))[:2] == (again, True)

    # Each write happened whole or not at all, and the counters agree with the rows.
    ledger = {c.id: c for c in await store.containers()}
    for i, e in enumerate(await store.executions_of(key("j1"))):
        container = ledger.get(f"c{i}")
        if e.state is QUEUED:
            assert container is None
        elif e.state is RUNNING:
            assert container is not None and container.in_flight == (e.id,)
        else:
            assert e.state is SUCCEEDED and e.response is not None
            assert container is not None and container.in_flight == ()
    for late in submitted:
        if (stored := await store.job_with_counts(late.key)) is not None:
            assert stored == (late, zeros(queued=2))
            assert len(await store.executions_of(late.key)) == 2
        else:
            assert await store.executions_of(late.key) == []
    tally = zeros()
    for e in await store.executions_of(key("j1")):
        tally[e.state] += 1
    assert await store.job_with_counts(key("j1")) == (job, tally)
    assert (await store.queue_sizes()).get("US", 0) == len(await store.queued())

    # And the rest of the work can be recorded.
    queued = [e for e in await store.queued() if e.job_id == "j1"]
    recorded = await store.admit(
        [started(e, f"c{i + 100}") for i, e in enumerate(queued)],
        [container_for(e, f"c{i + 100}") for i, e in enumerate(queued)],
    )
    assert recorded.executions == {e.id for e in queued}
    running = await store.running()
    done = [(replace(e, state=SUCCEEDED), e.container_id) for e in running]
    recorded = await store.finish(done, [])
    assert recorded.executions == {e.id for e in running}
    assert key("j1") in recorded.finished_jobs


async def test_an_owners_queued_executions_are_counted_across_their_jobs(store: Store) -> None:
    assert await store.queued_of("alice") == 0
    first = await submit(store, make_job("first"))  # 4 executions
    await submit(store, make_job("second", questions=("q",)))  # 2
    await submit(store, make_job("bobs", owner="bob"))  # 4, another owner's
    started = await admitted(store, first[0])
    await store.finish([(replace(started, state=SUCCEEDED), started.container_id)], [])
    await store.cancel_queued(key("second"), now=101.0)

    assert await store.queued_of("alice") == 3
    assert await store.queued_of("bob") == 4
    assert await store.queued_of("nobody") == 0
