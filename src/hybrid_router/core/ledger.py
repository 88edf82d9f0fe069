"""The container ledger: which containers hold GPUs, and the transitions that change it.

The ledger is the single source of truth for promise 1 (never over the limit): a container
holds its GPUs while a call is in flight and for the scaledown window after its last call.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from hybrid_router.core.model import Container, evolve


@dataclass(frozen=True)
class Usage:
    """GPUs held at one instant, per region and in total."""

    by_region: dict[str, int]
    busy_by_region: dict[str, int]
    total: int

    def region(self, name: str) -> int:
        return self.by_region.get(name, 0)


def held(
    containers: Iterable[Container], now: float, shared: frozenset[str] = frozenset()
) -> list[Container]:
    """The containers still holding GPUs at `now`.

    `shared` names providers whose containers take several inputs each. Their calls go to
    whichever container the provider picks, so while any call of a (provider, model) is in
    flight, every container of it is held (and releases keep the idle ones warm: see
    warm_siblings): the provider cannot hold more of them than the ledger has.
    """
    containers = list(containers)
    busy_groups = {
        (c.provider, c.model) for c in containers if c.in_flight and c.provider in shared
    }
    return [c for c in containers if c.held_at(now) or (c.provider, c.model) in busy_groups]


def expired(
    containers: Iterable[Container], now: float, shared: frozenset[str] = frozenset()
) -> list[str]:
    """Ids of containers that no longer hold GPUs at `now` and can be forgotten."""
    containers = list(containers)
    still = {c.id for c in held(containers, now, shared)}
    return [c.id for c in containers if c.id not in still]


def usage(
    containers: Iterable[Container], now: float, shared: frozenset[str] = frozenset()
) -> Usage:
    """GPUs held at `now` by busy, warm and orphaned containers."""
    by_region: Counter[str] = Counter()
    busy: Counter[str] = Counter()
    for c in held(containers, now, shared):
        by_region[c.region] += c.gpus
        if c.in_flight:
            busy[c.region] += c.gpus
    return Usage(dict(by_region), dict(busy), sum(by_region.values()))


def occupy(container: Container, execution_id: str) -> Container:
    """The container with one more call in flight."""
    return evolve(container, in_flight=(*container.in_flight, execution_id))


def release(
    container: Container, execution_ids: Collection[str], now: float, scaledown_s: float
) -> Container:
    """The container after these calls ended (by `now`): warm for the scaledown window once
    it is idle. Several at once cost one pass over a container's calls, however many."""
    ended = set(execution_ids)
    in_flight = tuple(e for e in container.in_flight if e not in ended)
    warm_until = container.warm_until
    if not in_flight:
        warm_until = max(warm_until, now + scaledown_s)
    return evolve(container, in_flight=in_flight, warm_until=warm_until)


def warm_siblings(
    containers: Iterable[Container], released: Container, now: float, scaledown_s: float
) -> list[Container]:
    """Idle containers of the released one's provider and model, kept warm as long as it.

    With several inputs per container the provider, not the router, picks which container
    each call ran in, so any of them may be the one that just served a call: each idle one
    is held for the scaledown window from now. (With one input per container, booking each
    call on the idle entry that expires first is enough: see policy._free_slot.)
    """
    held = hold_siblings(containers, released, now + scaledown_s)
    return [c for c in held if not c.in_flight]


def hold_siblings(
    containers: Iterable[Container], container: Container, until: float
) -> list[Container]:
    """The other containers of `container`'s provider and model, each held until `until` at
    least (those already held as long are left out).

    With several inputs per container the provider picks the container of each call: a call
    booked on one entry may run in any container of its group. So a call the router gives
    up on (abandon) may keep any of them up until `until`, busy or idle, not only its own.
    """
    return [
        evolve(c, warm_until=until)
        for c in containers
        if c.id != container.id
        and c.provider == container.provider
        and c.model == container.model
        and c.warm_until < until
    ]


def unsent(container: Container, execution_id: str) -> Container:
    """The container after a call that never reached the provider (connecting failed): as
    before it was booked. Nothing ran, so its warm window is neither started nor extended;
    opened for that call alone, it now holds no GPU and expires."""
    in_flight = tuple(e for e in container.in_flight if e != execution_id)
    return evolve(container, in_flight=in_flight)


def abandon(container: Container, execution_id: str, until: float) -> Container:
    """The container after the router gave up on a call the provider may still be running.

    A cancelled or timed-out call is not stopped at the provider (a Modal function runs on),
    nor is one whose router died: its container is no longer reused (an orphan) and holds
    its GPUs until `until`. With several inputs per container, hold its siblings as long
    (hold_siblings): the call may be running in any of them.
    """
    in_flight = tuple(e for e in container.in_flight if e != execution_id)
    return evolve(
        container, in_flight=in_flight, orphan=True, warm_until=max(container.warm_until, until)
    )
