"""What is queued, per region and per model lane, in policy order: the scheduler's input.

The leader builds this once from the store when it becomes leader and keeps it current from
its own writes and from submission events, so an admission round reads lane heads instead
of the whole queue (policy.decide_indexed), and a queue position is one bisection.

The order is the policy's without priority aging: higher priority first, then `seq`.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from typing import Any, TypeVar

from sortedcontainers import SortedList

from hybrid_router.core.model import Execution, ExecutionState

# Sorts like policy.queue_key without aging; the id makes entries unique and maps back.
_Key = tuple[int, int, str]
_K = TypeVar("_K", bound=Hashable)


def _key(e: Execution) -> _Key:
    return (-e.priority, e.seq, e.id)


class QueueIndex:
    """Queued executions by region and by (region, model) lane, each in policy order."""

    def __init__(self, executions: Iterable[Execution] = ()) -> None:
        self._by_id: dict[str, Execution] = {}
        self._regions: dict[str, SortedList[_Key]] = {}
        self._lanes: dict[tuple[str, str], SortedList[_Key]] = {}
        # Per region and priority, the seqs queued: what the regions' interleave needs.
        self._seqs: dict[str, dict[int, SortedList[int]]] = {}
        self._deadlines: SortedList[tuple[float, str]] = SortedList()
        self._build(executions)

    def _build(self, executions: Iterable[Execution]) -> None:
        """Index many executions at once: each sorted list is sorted once, not grown one
        insertion at a time (a leader starting on a long queue waits for this)."""
        for e in executions:
            if e.state is not ExecutionState.QUEUED:
                raise ValueError(f"{e.id} is {e.state}, not queued")
            self._by_id[e.id] = e
        regions: dict[str, list[_Key]] = {}
        lanes: dict[tuple[str, str], list[_Key]] = {}
        seqs: dict[str, dict[int, list[int]]] = {}
        deadlines = []
        for e in self._by_id.values():
            key = _key(e)
            regions.setdefault(e.region, []).append(key)
            lanes.setdefault((e.region, e.model), []).append(key)
            seqs.setdefault(e.region, {}).setdefault(e.priority, []).append(e.seq)
            if e.deadline_at is not None:
                deadlines.append((e.deadline_at, e.id))
        self._regions = {region: SortedList(keys) for region, keys in regions.items()}
        self._lanes = {lane: SortedList(keys) for lane, keys in lanes.items()}
        self._seqs = {
            region: {priority: SortedList(s) for priority, s in by_priority.items()}
            for region, by_priority in seqs.items()
        }
        self._deadlines = SortedList(deadlines)

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, execution_id: object) -> bool:
        return execution_id in self._by_id

    def __iter__(self) -> Iterator[Execution]:
        return iter(self._by_id.values())

    def get(self, execution_id: str) -> Execution | None:
        return self._by_id.get(execution_id)

    def add(self, e: Execution) -> None:
        """Index a queued execution (replacing what was indexed under its id)."""
        if e.state is not ExecutionState.QUEUED:
            raise ValueError(f"{e.id} is {e.state}, not queued")
        self.discard(e.id)
        self._by_id[e.id] = e
        key = _key(e)
        _insert(self._regions, e.region, key)
        _insert(self._lanes, (e.region, e.model), key)
        _insert(self._seqs.setdefault(e.region, {}), e.priority, e.seq)
        if e.deadline_at is not None:
            self._deadlines.add((e.deadline_at, e.id))

    def discard(self, execution_id: str) -> Execution | None:
        """Forget an execution (admitted, cancelled, expired); None if it was not indexed."""
        e = self._by_id.pop(execution_id, None)
        if e is None:
            return None
        key = _key(e)
        _remove(self._regions, e.region, key)
        _remove(self._lanes, (e.region, e.model), key)
        by_priority = self._seqs[e.region]
        _remove(by_priority, e.priority, e.seq)
        if not by_priority:
            del self._seqs[e.region]
        if e.deadline_at is not None:
            self._deadlines.remove((e.deadline_at, e.id))
        return e

    def sizes(self) -> dict[str, int]:
        """Per region with queued executions, how many."""
        return {region: len(keys) for region, keys in self._regions.items()}

    def lane_sizes(self) -> dict[tuple[str, str], int]:
        """Per (region, model) lane with queued executions, how many."""
        return {lane: len(keys) for lane, keys in self._lanes.items()}

    def position(self, execution_id: str) -> int | None:
        """1-based place in its region's order; None if not indexed."""
        e = self._by_id.get(execution_id)
        if e is None:
            return None
        return self._regions[e.region].bisect_left(_key(e)) + 1

    def lanes(self, region: str) -> dict[str, Iterator[Execution]]:
        """Each model's lane in `region`, as a lazy walk in policy order."""
        return {
            model: (self._by_id[key[2]] for key in keys)
            for (r, model), keys in self._lanes.items()
            if r == region
        }

    def regions(self) -> list[str]:
        """Regions with something queued."""
        return list(self._regions)

    def turn(self, e: Execution) -> int:
        """When `e`'s region gets its turn in the regions' interleave (policy._interleaved).

        The full scan merges the regions' queues by the `seq` of each one's next execution,
        so an execution waits for its turn until every execution ahead of it in its region
        has had one: its turn is the largest seq among them and itself. Ahead of it are the
        ones of higher priority (any seq) and those of equal priority with a lower seq.
        """
        turn = e.seq
        for priority, seqs in self._seqs.get(e.region, {}).items():
            if priority > e.priority and seqs:
                turn = max(turn, seqs[-1])
        return turn

    def next_deadline(self, now: float) -> float | None:
        """The earliest deadline after `now` of a queued execution, if any."""
        i = self._deadlines.bisect_right((now, "\U0010ffff"))
        return self._deadlines[i][0] if i < len(self._deadlines) else None

    def overdue(self, now: float) -> list[Execution]:
        """Queued executions whose deadline has passed by `now`."""
        i = self._deadlines.bisect_right((now, "\U0010ffff"))
        return [self._by_id[execution_id] for _, execution_id in self._deadlines[:i]]


def _insert(table: dict[_K, SortedList[Any]], key: _K, value: Any) -> None:
    # Not setdefault(key, SortedList()): that would build a list on every insertion.
    values = table.get(key)
    if values is None:
        table[key] = values = SortedList()
    values.add(value)


def _remove(table: dict[_K, SortedList[Any]], key: _K, value: Any) -> None:
    values = table[key]
    values.remove(value)
    if not values:
        del table[key]
