"""What only the Redis store does: its url, the fenced leader lease, retention, Redis away."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest

from hybrid_router.core.model import Container, Execution, ExecutionState, Job
from hybrid_router.errors import (
    ConfigError,
    DuplicateExecution,
    InvalidRequest,
    NotStorable,
    StoreFenced,
    StoreUnavailable,
)
from hybrid_router.store import redis as redis_store
from hybrid_router.store import store_from_url
from hybrid_router.store._codec import job_record
from hybrid_router.store.redis import LAYOUT_VERSION, RedisStore

from .conftest import REDIS_URL, redis_prefix
from .test_contract import admitted, container_for, key, make_job, started, submit, zeros

pytestmark = pytest.mark.redis

# Makes a new, unopened store on this test's prefix; keyword arguments go to RedisStore.
RedisFactory = Callable[..., RedisStore]


@pytest.fixture
async def make() -> AsyncIterator[RedisFactory]:
    async with redis_prefix() as prefix:
        made: list[RedisStore] = []

        def factory(**kwargs: Any) -> RedisStore:
            store = RedisStore(REDIS_URL, prefix=prefix, **kwargs)
            made.append(store)
            return store

        try:
            yield factory
        finally:
            for store in made:
                await store.close()


async def opened(make: RedisFactory, **kwargs: Any) -> RedisStore:
    store = make(**kwargs)
    await store.open()
    return store


async def snapshot(store: RedisStore) -> tuple[object, ...]:
    return (
        await store.executions_of(key("j1")),
        await store.containers(),
        await store.region_counts(),
        await store.queue_sizes(),
    )


# The url


@pytest.mark.parametrize(
    ("url", "client_url", "prefix"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0", "hr"),
        ("redis://10.0.0.5:6380/2?prefix=router-a", "redis://10.0.0.5:6380/2", "router-a"),
        (
            "rediss://:secret@redis.internal:6379/0?prefix=x&socket_keepalive=true",
            "rediss://:secret@redis.internal:6379/0?socket_keepalive=true",
            "x",
        ),
        ("REDIS://h/0?prefix=a:b", "redis://h/0", "a:b"),
    ],
)
def test_store_from_redis_url(url: str, client_url: str, prefix: str) -> None:
    store = store_from_url(url)
    assert isinstance(store, RedisStore)
    assert (store.url, store.prefix) == (client_url, prefix)


def test_an_empty_prefix_is_a_config_error_that_does_not_echo_the_password() -> None:
    with pytest.raises(ConfigError, match="prefix") as raised:
        store_from_url("redis://:secret@h:6379/0?prefix=")
    assert "secret" not in raised.value.message


# The leader lease and its fencing token


async def test_a_leader_whose_lease_was_taken_over_can_write_nothing(make: RedisFactory) -> None:
    old = await opened(make)
    assert await old.acquire_scheduler_lock()
    first, second, *_ = await submit(old, make_job())
    running = await admitted(old, first)
    # Its lease lapses (say the process was paused) and another replica takes over.
    await old.client.delete(f"{old.prefix}:leader")
    new = await opened(make)
    assert await new.acquire_scheduler_lock()
    assert new.fencing_token is not None and old.fencing_token is not None
    assert new.fencing_token > old.fencing_token
    before = await snapshot(new)

    with pytest.raises(StoreFenced) as raised:
        await old.admit([started(second, "c2")], [container_for(second, "c2")])
    assert (raised.value.status_code, raised.value.code) == (503, "NOT_LEADER")
    done = replace(running, state=ExecutionState.SUCCEEDED)
    with pytest.raises(StoreFenced):
        await old.finish([(done, "c1")], [], removed=["c1"])
    with pytest.raises(StoreFenced):
        await old.expire([replace(second, state=ExecutionState.EXPIRED)])
    with pytest.raises(StoreFenced):
        await old.requeue([replace(running, state=ExecutionState.QUEUED, container_id=None)])
    with pytest.raises(StoreFenced):
        await old.save_containers([], removed=["c1"])
    assert not await old.renew_scheduler_lock()

    assert await snapshot(new) == before
    # The new leader writes; any replica still takes submissions and cancellations.
    assert (await new.finish([(done, "c1")], [], removed=["c1"])).executions == {running.id}
    await submit(old, make_job("j2", created_at=101.0))
    assert len(await old.cancel_queued(key("j2"), now=102.0)) == 4


async def test_a_store_without_a_token_is_not_fenced(make: RedisFactory) -> None:
    leader = await opened(make)
    assert await leader.acquire_scheduler_lock()
    other = await opened(make)
    assert other.fencing_token is None
    first, *_ = await submit(other, make_job())

    recorded = await other.admit([started(first)], [container_for(first)])
    assert recorded.executions == {first.id}


async def test_the_lease_lapses_unless_renewed(make: RedisFactory) -> None:
    first = await opened(make, lease_ttl_s=0.2)
    second = await opened(make, lease_ttl_s=0.2)
    assert await first.acquire_scheduler_lock()
    assert not await second.acquire_scheduler_lock()

    await asyncio.sleep(0.35)

    assert await second.acquire_scheduler_lock()
    assert not await first.renew_scheduler_lock()
    assert not await first.acquire_scheduler_lock()


async def test_only_the_holder_renews_or_releases_the_lease(make: RedisFactory) -> None:
    holder = await opened(make, lease_ttl_s=5.0)
    other = await opened(make, lease_ttl_s=60.0)
    assert await holder.acquire_scheduler_lock()
    token = holder.fencing_token
    lease = f"{holder.prefix}:leader"
    await holder.client.pexpire(lease, 1000)

    assert not await other.renew_scheduler_lock()
    await other.release_scheduler_lock()
    assert 0 < await holder.client.pttl(lease) <= 1000

    assert await holder.renew_scheduler_lock()
    assert 1000 < await holder.client.pttl(lease) <= 5000
    assert await holder.acquire_scheduler_lock()
    assert holder.fencing_token == token

    await holder.release_scheduler_lock()
    assert await other.acquire_scheduler_lock()
    # The one that let go keeps its token, so what it still writes is refused.
    assert holder.fencing_token == token
    with pytest.raises(StoreFenced):
        await holder.save_containers([])


async def test_set_fencing_token_checks_writes_against_the_current_lease(
    make: RedisFactory,
) -> None:
    leader = await opened(make)
    assert await leader.acquire_scheduler_lock()
    token = leader.fencing_token
    assert token is not None
    follower = await opened(make)
    busy = Container("c1", "modal-us", "m", "US", 1)

    follower.set_fencing_token(token - 1)
    with pytest.raises(StoreFenced):
        await follower.save_containers([busy])
    follower.set_fencing_token(token)
    await follower.save_containers([busy])
    assert await leader.containers() == [busy]


# Retention


async def ttls(store: RedisStore, job_id: str, owner: str = "alice") -> list[int]:
    """The remaining lives in ms of the keys of `owner`'s job `job_id` (-1: no expiry)."""
    prefix = f"{store.prefix}:job"
    keys = [f"{prefix}:{owner}/{job_id}", f"{prefix}x:{owner}/{job_id}"]
    executions = await store.executions_of(key(job_id, owner))
    keys += [f"{store.prefix}:exec:{e.id}" for e in executions]
    return [await store.client.pttl(key) for key in keys]


async def test_finished_jobs_expire_and_queued_ones_never(make: RedisFactory) -> None:
    store = await opened(make, retention_s=3600)
    first, second = await submit(store, make_job("j1", models=("m",), questions=("a", "b")))
    await submit(store, make_job("queued", models=("m",), created_at=101.0))
    await submit(store, make_job("cancelled", models=("m",), created_at=102.0))
    running = await admitted(store, first)
    await store.finish([(replace(running, state=ExecutionState.SUCCEEDED), "c1")], [])

    # One execution still queued: the job is not finished.
    assert set(await ttls(store, "j1")) == {-1}
    running = await admitted(store, second, "c2")
    assert set(await ttls(store, "j1")) == {-1}
    recorded = await store.finish([(replace(running, state=ExecutionState.FAILED), "c2")], [])
    assert recorded.finished_jobs == {key("j1")}
    await store.cancel_queued(key("cancelled"), now=103.0)

    for job_id in ("j1", "cancelled"):
        assert all(3_590_000 < ttl <= 3_600_000 for ttl in await ttls(store, job_id))
    assert set(await ttls(store, "queued")) == {-1}


async def test_expired_jobs_leave_the_listings_but_not_the_counts(make: RedisFactory) -> None:
    store = await opened(make, retention_s=0.05)
    await submit(store, make_job("gone", models=("m",)))
    await submit(store, make_job("kept", models=("m",), created_at=101.0))
    await store.cancel_queued(key("gone"), now=102.0)
    counts = await store.region_counts()

    await asyncio.sleep(0.2)

    assert await store.get_job(key("gone")) is None
    assert await store.executions_of(key("gone")) == []
    assert [j.id for j, _ in await store.list_jobs()] == ["kept"]
    assert [j.id for j, _ in await store.list_jobs(owner="alice")] == ["kept"]
    assert await store.region_counts() == counts
    # The id can be used again, for a new job.
    again = make_job("gone", models=("m",), created_at=200.0)
    assert (await store.submit_job(again, again.expand()))[:2] == (again, True)
    assert [j.id for j, _ in await store.list_jobs()] == ["gone", "kept"]


async def test_purge_with_a_later_now_deletes_finished_jobs_at_once(make: RedisFactory) -> None:
    store = await opened(make, retention_s=3600)
    await submit(store, make_job("done", models=("m",)))
    await submit(store, make_job("waiting", models=("m",), created_at=101.0))
    await store.cancel_queued(key("done"), now=102.0)

    redis_now = (await store.client.time())[0]
    assert await store.purge_expired(redis_now + 3601) == 1

    assert await store.get_job(key("done")) is None
    assert [j.id for j, _ in await store.list_jobs()] == ["waiting"]
    assert not [k async for k in store.client.scan_iter(match=f"{store.prefix}:exec:done:*")]
    assert await store.purge_expired(redis_now + 3601) == 0


# Reading the whole queue


@pytest.mark.parametrize("page", [1, 3, 4, 100])
async def test_queued_and_running_read_page_after_page_in_seq_order(
    make: RedisFactory, monkeypatch: pytest.MonkeyPatch, page: int
) -> None:
    monkeypatch.setattr(redis_store, "_PAGE", page)
    store = await opened(make)
    assert await store.queued() == []
    one = await submit(store, make_job("j1", models=("m",), questions=("a", "b", "c", "d")))
    two = await submit(store, make_job("j2", models=("m",), questions=("e", "f", "g", "h")))
    running = [await admitted(store, e, f"c{i}") for i, e in enumerate((one[1], two[0]))]

    assert await store.queued() == [one[0], *one[2:], *two[1:]]
    assert await store.running() == running


# Exactness and refusals


async def test_cancelling_keeps_every_float_exact(make: RedisFactory) -> None:
    # Lua's cjson would round these to 14 digits; the cancel script must not re-encode them.
    store = await opened(make)
    job = replace(make_job(models=("m",), questions=("a",)), temperature=0.1 + 0.2)
    job = replace(job, created_at=1712345678.1234567)
    (queued,) = await submit(store, job)
    now = 1712345999.9876543

    (cancelled,) = await store.cancel_queued(key("j1"), now=now)

    expected = replace(queued, state=ExecutionState.CANCELLED, finished_at=now)
    assert cancelled == expected
    assert await store.executions_of(key("j1")) == [expected]
    assert (expected.temperature, expected.queued_at) == (0.1 + 0.2, 1712345678.1234567)


async def test_a_priority_the_region_score_cannot_hold_is_refused(make: RedisFactory) -> None:
    store = await opened(make)
    job = replace(make_job(), priority=5000)

    with pytest.raises(NotStorable, match="priority 5000") as refused:
        await store.submit_job(job, job.expand())

    # A store error, not one about the request: the API's handler alone decides the answer.
    assert not isinstance(refused.value, InvalidRequest)
    assert (refused.value.status_code, refused.value.code) == (422, "INVALID_PRIORITY")

    assert await store.get_job(job.key) is None


async def test_a_submission_reusing_an_execution_id_writes_nothing(make: RedisFactory) -> None:
    store = await opened(make)
    first = Job(id="first", models=("m",), regions=("US",), questions=("q",))
    await store.submit_job(first, first.expand())
    second = Job(id="second", models=("m",), regions=("US", "EU"), questions=("q",))

    with pytest.raises(DuplicateExecution, match="anonymous/first:0:m:US"):
        await store.submit_job(second, [second.expand()[0], first.expand()[0]])

    assert await store.get_job(key("second", "anonymous")) is None
    assert [e.id for e in await store.queued()] == [e.id for e in first.expand()]
    assert await store.queue_sizes() == {"US": 1}


async def test_data_from_a_newer_layout_is_refused(make: RedisFactory) -> None:
    store = await opened(make)
    await store.client.set(f"{store.prefix}:version", LAYOUT_VERSION + 1)

    with pytest.raises(ConfigError, match="newer"):
        await opened(make)


async def write_layout_1(
    store: RedisStore, job: Job, states: tuple[ExecutionState, ...], *, retention_ms: int = 0
) -> list[Execution]:
    """`job` as a router of layout 1 stored it: keyed by its id alone, its executions' ids
    and JSON without the owner; finished (its keys expiring) when `retention_ms`."""
    client, p = store.client, store.prefix
    seq = int(await client.incr(f"{p}:seq"))
    member = f"{seq:015d}|{job.id}"
    executions = []
    for e, state in zip(job.expand(), states, strict=True):
        e = replace(e, id=e.id.split("/", 1)[1], state=state)
        executions.append(replace(e, seq=int(await client.incr(f"{p}:seq"))))
    await client.hset(
        f"{p}:job:{job.id}",
        mapping={
            "job": json.dumps(job_record(job)),
            "ref": json.dumps([job.id, member, job.owner]),
            **{state.value: str(states.count(state)) for state in set(states)},
        },
    )
    await client.zadd(f"{p}:jobs", {member: job.created_at})
    await client.zadd(f"{p}:jobs:owner:{job.owner}", {member: job.created_at})
    for e in executions:
        record = json.loads(redis_store._encode_execution(e))
        del record["owner"]
        await client.set(f"{p}:exec:{e.id}", json.dumps(record, separators=(",", ":")))
        await client.zadd(f"{p}:jobx:{job.id}", {e.id: e.seq})
        await client.hincrby(f"{p}:counts", f"{e.state.value}|{e.region}", 1)
        if e.state is ExecutionState.QUEUED:
            await client.zadd(f"{p}:queued", {e.id: e.seq})
            await client.zadd(f"{p}:queued:{e.region}", {e.id: e.seq - e.priority * 2**40})
    if retention_ms:
        at = (await client.time())[0] * 1000 + retention_ms
        keys = [f"{p}:job:{job.id}", f"{p}:jobx:{job.id}"]
        for k in keys + [f"{p}:exec:{e.id}" for e in executions]:
            await client.pexpireat(k, at)
        await client.zadd(f"{p}:expiring", {json.dumps([job.id, member, job.owner]): at})
    return executions


async def test_data_of_layout_1_is_upgraded_to_jobs_keyed_by_owner(make: RedisFactory) -> None:
    old = await opened(make)
    await old.client.set(f"{old.prefix}:version", 1)
    waiting = make_job("w1", models=("m",), questions=("a", "b"))
    finished = make_job("d1", owner="bob", models=("m",), questions=("a",), created_at=101.0)
    queued = await write_layout_1(old, waiting, (ExecutionState.QUEUED, ExecutionState.SUCCEEDED))
    await write_layout_1(old, finished, (ExecutionState.CANCELLED,), retention_ms=3_600_000)

    store = await opened(make)

    assert await store.client.get(f"{store.prefix}:version") == str(LAYOUT_VERSION)
    assert await store.get_job(waiting.key) == waiting
    assert await store.get_job(finished.key) == finished
    assert await store.list_jobs() == [
        (finished, zeros(cancelled=1)),
        (waiting, zeros(queued=1, succeeded=1)),
    ]
    assert await store.list_jobs(owner="bob") == [(finished, zeros(cancelled=1))]
    stored = await store.executions_of(waiting.key)
    assert [(e.id, e.owner, e.state) for e in stored] == [
        ("w1:0:m:US", "alice", ExecutionState.QUEUED),
        ("w1:1:m:US", "alice", ExecutionState.SUCCEEDED),
    ]
    assert await store.queued() == stored[:1] == queued[:1]
    # A finished job keeps its expiry, and the purge still finds it.
    assert all(3_500_000 < ttl <= 3_600_000 for ttl in await ttls(store, "d1", "bob"))
    assert await store.job_owners("d1") == ["bob"]
    # Writes go on from there: the queued execution cancels and its job finishes.
    assert [e.id for e in await store.cancel_queued(waiting.key, now=200.0)] == ["w1:0:m:US"]
    assert await store.job_with_counts(waiting.key) == (waiting, zeros(cancelled=1, succeeded=1))
    redis_now = (await store.client.time())[0]
    assert await store.purge_expired(redis_now + 8 * 86400) == 2
    assert await store.list_jobs() == []
    assert await store.job_owners("d1") == []
    # Opening again finds it current.
    await opened(make)


# Redis away


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_unreachable_redis_is_store_unavailable() -> None:
    store = RedisStore(f"redis://127.0.0.1:{closed_port()}/0", prefix="unreachable")
    try:
        with pytest.raises(StoreUnavailable) as raised:
            await store.open()
        assert raised.value.code == "STORE_UNAVAILABLE"
        assert raised.value.message.startswith("store unavailable: ")
        # The store stays usable: calls fail the same way until Redis answers.
        with pytest.raises(StoreUnavailable):
            await store.submit_job(make_job(), make_job().expand())
        with pytest.raises(StoreUnavailable):
            await store.acquire_scheduler_lock()
    finally:
        await store.close()


async def test_submissions_go_through_when_redis_has_lost_the_script(make: RedisFactory) -> None:
    """As after a restart or a failover: the batch's EVALSHA are refused, the script is
    loaded again and the batch stored, in order. (A sha Redis never saw stands in for a
    flush, which would take every other user's scripts on this Redis.)"""
    store = await opened(make)
    submit_script = store._script("submit")
    real_sha = submit_script.sha
    submit_script.sha = "0" * 40
    jobs = [make_job(f"lost-{i}") for i in range(5)]
    outcomes = await asyncio.gather(*(store.submit_job(j, j.expand()) for j in jobs))
    assert [(o.job, o.created) for o in outcomes] == [(j, True) for j in jobs]
    seqs = [e.seq for o in outcomes for e in o.executions]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert submit_script.sha == real_sha
    for job, outcome in zip(jobs, outcomes, strict=True):
        assert list(outcome.executions) == await store.executions_of(job.key)
