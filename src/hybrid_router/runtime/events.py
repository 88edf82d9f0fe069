"""Progress events and the bus that carries them to every subscriber, in every replica.

One bus serves three needs: waking the scheduler when any replica accepts or cancels work,
waking `POST /inference` waiters on whichever replica holds the request, and the
server-sent event streams clients follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, fields
from typing import Any, Protocol

from redis.exceptions import RedisError

from hybrid_router import _json
from hybrid_router.core.model import Execution, JobKey
from hybrid_router.store.redis_connect import redis_client

log = logging.getLogger(__name__)

# The end of a job, after its executions' events (queued, started, retrying, succeeded, ...).
JOB_FINISHED = "job_finished"
# Internal: asks the scheduling replica to close these running calls.
CANCEL_REQUESTED = "cancel_requested"
# Internal: an admin paused, drained or reopened a region (job_id is empty).
REGION_CHANGED = "region_changed"

SUBSCRIBER_BACKLOG = 10_000


@dataclass(frozen=True)
class Event:
    """Something that happened to a job or one of its executions.

    A job is named by its owner and its id together: another owner may have a job of the
    same id, whose events a stream of this one's must never show.
    """

    kind: str
    job_id: str
    at: float
    owner: str | None = None  # None: not about a job (region_changed)
    execution_id: str | None = None
    region: str | None = None
    model: str | None = None
    attempts: int | None = None
    state: str | None = None
    error_code: str | None = None
    message: str | None = None
    execution_ids: tuple[str, ...] = ()
    # The node that published it (queued events): the leader loads a job announced by
    # another replica from the store, and one of its own process straight from the service.
    origin: str | None = None

    @property
    def job_key(self) -> JobKey | None:
        """The job it is about, if any."""
        return None if self.owner is None else JobKey(self.owner, self.job_id)

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set (`at` in epoch seconds)."""
        # Not dataclasses.asdict: it deep-copies every value, for two events per execution.
        values = ((name, getattr(self, name)) for name in _EVENT_FIELDS)
        return {k: v for k, v in values if v is not None and v != ()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Event:
        """The event `to_dict` gave."""
        return cls(**{**data, "execution_ids": tuple(data.get("execution_ids", ()))})


_EVENT_FIELDS = tuple(f.name for f in fields(Event))


def job_event(kind: str, key: JobKey, at: float, **details: Any) -> Event:
    """An event about a whole job (queued, job_finished, cancel_requested)."""
    return Event(kind, key.id, at, owner=key.owner, **details)


def execution_event(
    execution: Execution, kind: str | None = None, at: float | None = None
) -> Event:
    """The event for `execution`'s latest transition (its state, unless `kind` says more)."""
    return Event(
        kind=kind or execution.state.value,
        job_id=execution.job_id,
        at=at if at is not None else (execution.finished_at or execution.queued_at),
        owner=execution.owner,
        execution_id=execution.id,
        region=execution.region,
        model=execution.model,
        attempts=execution.attempts,
        state=execution.state.value,
        error_code=execution.error.code if execution.error else None,
        message=execution.error.message if execution.error else None,
    )


class EventBus(Protocol):
    async def start(self) -> None:
        """Begin delivering events."""

    async def publish(self, *events: Event) -> None:
        """Deliver `events`, in order, to every subscriber in every replica (best effort)."""

    def subscribe(self) -> Subscription:
        """Every event published from now on, until the subscription is closed."""

    async def close(self) -> None:
        """Stop delivering; subscribers' iterators end."""


class Subscription:
    """One subscriber's events, registered at creation so nothing published after is missed."""

    def __init__(self, subscribers: set[asyncio.Queue[Event | None]]) -> None:
        self._subscribers = subscribers
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(SUBSCRIBER_BACKLOG)
        subscribers.add(self._queue)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        event = await self._queue.get()
        if event is None:
            self.close()
            raise StopAsyncIteration
        return event

    def close(self) -> None:
        """Stop receiving events."""
        self._subscribers.discard(self._queue)


class LocalBus:
    """Fan-out to this process's subscribers: the bus of a single router."""

    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[Event | None]] = set()

    async def start(self) -> None:
        """Nothing to start."""

    async def publish(self, *events: Event) -> None:
        """Deliver to every local subscriber."""
        for event in events:
            self.deliver(event)

    def deliver(self, event: Event | None) -> None:
        """Hand `event` to each subscriber; a subscriber too far behind loses the oldest."""
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()
                log.warning("an event subscriber is too slow; dropped its oldest event")
            queue.put_nowait(event)

    def subscribe(self) -> Subscription:
        """Every event from now on (from this call, not from the first iteration)."""
        return Subscription(self._subscribers)

    async def close(self) -> None:
        """End every subscriber's iterator."""
        self.deliver(None)


# Events waiting for the sender at most (a few seconds' worth under load).
OUTBOX_LIMIT = 10_000


class RedisBus:
    """Redis pub/sub between replicas, fanned out locally by one listener per process.

    A replica's own events go to its subscribers at once, and its listener skips them when
    they come back from Redis: each message names the node that sent it, then lists the
    events it published since its last message.
    """

    def __init__(self, url: str, channel: str, node_id: str) -> None:
        # Its own connections, with short timeouts: a publish must never hang a request.
        self._client = redis_client(
            url, decode_responses=True, socket_connect_timeout=2.0, socket_timeout=None
        )
        self._channel = channel
        self._node_id = node_id
        self._local = LocalBus()
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._outbox: list[Event] = []
        self._sender: asyncio.Task[None] | None = None
        # Set by close(): the listener ends even if the cancel close() sends is lost (the
        # Redis client may turn it into its own timeout error, which the listener retries).
        self._closing = False

    async def start(self) -> None:
        """Start listening; returns once subscribed (or after a bounded wait if Redis is down)."""
        self._listener = asyncio.create_task(self._listen(), name="event-bus listener")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):  # not wait_for: see leadership
                await self._listening.wait()

    async def publish(self, *events: Event) -> None:
        """Deliver here at once; the other replicas get them from a sender task, which puts
        every event published while its last round trip was in flight into the next one (a
        request never waits for Redis). If Redis is down they miss them (logged)."""
        for event in events:
            self._local.deliver(event)
        self._outbox.extend(events)
        if len(self._outbox) > OUTBOX_LIMIT:
            # Redis is hanging: the oldest go, as they would to a replica that lost Redis.
            log.warning("event bus backlog over %d: dropping the oldest events", OUTBOX_LIMIT)
            del self._outbox[: len(self._outbox) - OUTBOX_LIMIT]
        if self._outbox and self._sender is None:
            self._sender = asyncio.create_task(self._send(), name="event-bus sender")

    async def _send(self) -> None:
        try:
            while self._outbox:
                events, self._outbox = self._outbox, []
                batch = _json.dumps([event.to_dict() for event in events])
                try:
                    await self._client.publish(self._channel, self._node_id.encode() + b"|" + batch)
                except RedisError as exc:
                    log.warning(
                        "could not publish %d events (%s ...): %s",
                        len(events),
                        events[0].kind,
                        exc,
                    )
        finally:
            self._sender = None

    def subscribe(self) -> Subscription:
        """Every event any replica publishes from now on."""
        return self._local.subscribe()

    async def close(self) -> None:
        """Send what is still to send (for a few seconds at most), stop listening and end
        local subscribers."""
        if (sender := self._sender) is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(5.0):
                    await asyncio.shield(sender)
            sender.cancel()
        self._closing = True
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        self._local.deliver(None)
        await self._client.aclose()

    async def _listen(self) -> None:
        delay = 0.1
        while not self._closing:
            try:
                async with self._client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self._channel)
                    self._listening.set()
                    delay = 0.1
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        sender, _, text = message["data"].partition("|")
                        if sender != self._node_id:
                            for data in _json.loads(text):
                                self._local.deliver(Event.from_dict(data))
            except (RedisError, OSError) as exc:
                # Redis went away: keep trying; waiters fall back on their own timeouts.
                log.warning("event bus lost Redis (%s); reconnecting", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
