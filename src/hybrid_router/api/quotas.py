"""Per-user limits on submissions: highest priority, executions queued at once, and rate.

Every check runs before anything is stored, so a refused job queues nothing. Rates count
*executions* submitted (a job of N executions costs N) in a moving window of the `limits`
library, keyed by user name, so one user's traffic never uses another's budget.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from typing import Any, cast
from urllib.parse import urlparse

from limits import RateLimitItem
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string
from redis.asyncio import Redis

from hybrid_router.api.auth import User
from hybrid_router.core.model import Job, JobStatus
from hybrid_router.errors import Forbidden, RateLimited, StoreUnavailable
from hybrid_router.runtime.service import JobRequest, RouterService
from hybrid_router.store.redis_connect import SCHEMES as REDIS_SCHEMES
from hybrid_router.store.redis_connect import redis_client


def rate_limit_storage_uri(store_url: str) -> str:
    """Where rate counters live: in the router's Redis when it has one, else in memory.

    On Redis every replica shares one count per user; in memory (the SQLite store, one
    process) the counts start afresh when the router restarts.
    """
    if urlparse(store_url).scheme in REDIS_SCHEMES:
        return f"async+{store_url}"
    return "async+memory://"


class Quotas:
    """Submits jobs on a user's behalf, within that user's configured limits."""

    def __init__(self, storage_uri: str, *, clock: Callable[[], float] = time.time) -> None:
        options: dict[str, Any] = {"wrap_exceptions": True}
        self._redis: Redis | None = None
        if "redis" in urlparse(storage_uri).scheme:
            # redis-py is already a dependency (the store uses it); `limits` defaults to coredis.
            options["implementation"] = "redispy"
            # Our own client's pool, handed to `limits`, so that aclose() can close it, and
            # connected as the store is (TLS, Sentinel): `limits` itself then only needs to
            # know it talks to a Redis.
            self._redis = redis_client(storage_uri.removeprefix("async+"))
            options["connection_pool"] = self._redis.connection_pool
            storage_uri = "async+redis://"
        storage = storage_from_string(storage_uri, **cast(dict[str, float | str | bool], options))
        self._limiter = MovingWindowRateLimiter(storage)
        self._clock = clock
        # One submission at a time per user with a max_queued: two at once could both see room.
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def aclose(self) -> None:
        """Close the connections to the rate counters (Redis); in memory there are none."""
        if self._redis is not None:
            await self._redis.aclose()

    async def submit(
        self, service: RouterService, request: JobRequest, user: User
    ) -> tuple[JobStatus, bool]:
        """`service.submit(request)` if `user` may: 403 / 429 with a code otherwise."""
        if user.max_priority is not None and request.priority > user.max_priority:
            raise Forbidden(
                f"priority {request.priority} is above your max_priority {user.max_priority}",
                code="PRIORITY_NOT_ALLOWED",
            )
        if user.max_queued is None and user.rate_limit is None:
            return await service.submit(request)
        gate = partial(self._admit, service, user)
        if user.max_queued is None:
            return await service.submit(request, gate=gate)
        async with self._locks[user.name]:
            return await service.submit(request, gate=gate)

    async def _admit(self, service: RouterService, user: User, job: Job, executions: int) -> None:
        """Raise unless `user` may queue `executions` more now; spends them from the rate."""
        if user.max_queued is not None:
            if executions > user.max_queued:
                raise _too_large(executions, f"max_queued {user.max_queued}")
            queued = await service.queued_of(user.name)
            if queued + executions > user.max_queued:
                # No Retry-After: room appears as executions start, which no clock predicts.
                raise RateLimited(
                    f"{queued} of your executions are queued; {executions} more would exceed "
                    f"max_queued {user.max_queued}",
                    code="QUOTA_EXCEEDED",
                )
        item = user.rate_limit
        if item is None:
            return
        if executions > item.amount:
            raise _too_large(executions, f"rate_limit {item.amount} per {_window(item)}")
        try:
            # Checked last: a hit spends the budget, and a job refused above must not.
            if await self._limiter.hit(item, "user", user.name, cost=executions):
                return
            stats = await self._limiter.get_window_stats(item, "user", user.name)
        except StorageError as exc:
            raise StoreUnavailable(f"rate-limit storage unavailable: {exc}") from None
        # When the oldest execution in the window leaves it: the earliest a retry can pass
        # (a job of several may need a little longer, and is then told again).
        retry_after = max(1, math.ceil(stats.reset_time - self._clock()))
        raise RateLimited(
            f"rate limit of {item.amount} executions per {_window(item)} reached "
            f"({stats.remaining} left, this job has {executions}); retry in {retry_after} s",
            retry_after_s=retry_after,
        )


def _too_large(executions: int, limit: str) -> Forbidden:
    # 403, not 429: waiting never lets this job through, so a client must not be told to retry.
    return Forbidden(
        f"a job of {executions} executions can never fit your {limit}; split it",
        code="JOB_TOO_LARGE",
    )


def _window(item: RateLimitItem) -> str:
    """`5/minute` -> "minute", `5/2 minutes` -> "2 minutes"."""
    unit = item.GRANULARITY.name
    return unit if item.multiples == 1 else f"{item.multiples} {unit}s"
