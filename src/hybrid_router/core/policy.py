"""Admission policy: which queued executions start now (DESIGN section 3).

Each region's queue is walked in order (higher priority first, then queue order), the
regions' next executions interleaved by age. An execution reuses a free input slot of its
model, else opens a container if its GPUs fit the region's and the global limit, else waits:

* behind a container of its model that is up: later executions of that model wait too;
* for a GPU, when none of its model is up: later executions in its region may then not open
  containers, and while the global limit is what binds, younger executions elsewhere may
  not either, so the oldest waiting head gets the first GPU that frees anywhere.

First containers first: before the walk, the head of every lane (region, model) with no
container of its model up may open one on the GPUs free now, oldest first, before any
model opens a second container in that region. Otherwise a model whose jobs come first (one
job per model is a natural way to submit) would take every free GPU, and the next model's
head would wait a whole scaledown window for one of them while they idle. The walk then
goes on as above: the executions behind wait for their own model's container, FIFO per
model. Only heads of the region's highest priority take part, and never in sequential mode
(`max_running = 1`, strict FIFO); a head that cannot open now waits in its place in the walk.

Backfill: while a head waits for a GPU, later executions still reuse idle containers, but
only those whose GPUs no waiting head needs: every lane's head with none of its model up may
wait for GPUs in its region and in the account, and gets the first ones to free there (free
ones, then idle containers as they expire); a reuse that would change when any of those
frees is not made. So no head starts later than under the rule before backfill, which kept
every idle container from reuse (`Topology.backfill = False`, kept as the reference). The
provider picks which of its idle containers serves a call, so a call is booked on the one
expiring first (see _free_slot): a model whose container expiring first is needed takes no
call on the others either.

Sharing the account: once every lane has a container of its model up and only the account's
limit can bind, no head waits for a GPU, and the account's free GPUs go by a rule the
scheduler plans (Share): to the oldest execution as above, or where they shorten the whole.

Busy containers' spare input slots stay usable throughout: they free no GPU by waiting.
Each execution left queued gets the reason it waits (core.model.Wait).

A provider cooling down (core.health) is skipped, its containers included, while another
provider of the region serving the model is not; when every one of them cools down, they are
all used as if healthy, so the execution's own backoff paces the retries (promise 5).
"""

from __future__ import annotations

import enum
import heapq
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from hybrid_router.core import ledger
from hybrid_router.core.model import (
    Container,
    Execution,
    ExecutionState,
    ModelSpec,
    ProviderSpec,
    Region,
    Wait,
    WaitCode,
    evolve,
)
from hybrid_router.core.queue_index import QueueIndex


@dataclass(frozen=True)
class Topology:
    """The limits and the providers the policy decides within."""

    gpu_limit: int
    regions: Mapping[str, Region]
    models: Mapping[str, ModelSpec]
    providers: Mapping[str, ProviderSpec]
    # Every this many seconds in the queue adds 1 to an execution's priority, so low priority
    # cannot starve behind a steady stream of high. None: priorities are absolute.
    priority_aging_s: float | None = None
    # Backfill behind reservations (see the module's docstring). False: the rule before it,
    # where a head waiting for a GPU keeps every idle container in its scope from reuse; kept
    # as the reference the property tests and benchmarks compare with.
    backfill: bool = True
    # Whether the scheduler plans how the account's free GPUs are handed out (Share,
    # simulate.Planner); False: they always go to the oldest execution (the rule before).
    planned_share: bool = True

    @property
    def plans_share(self) -> bool:
        """Whether there is a Share to plan: planned, and the account's limit may bind."""
        return self.planned_share and self.account_may_bind

    def providers_for(self, region: str, model: str) -> list[ProviderSpec]:
        """Providers serving `model` in `region`, in config order."""
        return self._serving.get((region, model), [])

    @cached_property
    def _serving(self) -> dict[tuple[str, str], list[ProviderSpec]]:
        """Providers by (region, model): asked for every execution a round considers."""
        serving: dict[tuple[str, str], list[ProviderSpec]] = {}
        for p in self.providers.values():
            for model in p.models:
                serving.setdefault((p.region, model), []).append(p)
        return serving

    @cached_property
    def account_may_bind(self) -> bool:
        """Whether the account's limit can bind before the regions' do."""
        return self.gpu_limit < sum(r.gpu_limit for r in self.regions.values())

    @cached_property
    def shared(self) -> frozenset[str]:
        """Providers whose containers take several inputs each (see ledger.held)."""
        return frozenset(p.name for p in self.providers.values() if p.max_inputs > 1)

    def gpus(self, model: str) -> int:
        spec = self.models.get(model)
        return spec.gpus if spec else 1


class ShareRule(enum.Enum):
    """Where the account's free GPUs go once every lane has a container of its model up
    and only the account's limit may bind (see Share)."""

    # To the walk's oldest execution that finds no container free: the rule before Share.
    OLDEST = "oldest"
    # To the lane with the most expected work per container of its model.
    LANE_WORK = "lane-work"
    # GPUs freed since the last round back to their region's lanes first, then LANE_WORK:
    # each region keeps the share it had.
    RECLAIM = "reclaim"


# A warm call's expected seconds in (region, model): what the estimates keep.
ExpectedSeconds = Callable[[str, str], float]


@dataclass(frozen=True)
class Share:
    """How a round hands out the account's free GPUs when only the account may bind and
    every lane (region, model) with work queued has a container of its model up.

    The walk alone gives each free GPU to the oldest execution that finds no container
    free, so a region whose head is oldest takes every GPU that frees anywhere, finishes
    early, and the others pay extra cold starts at the end. No rule wins every workload
    (simulate.Planner chooses by running each forward). Starvation stays impossible: every
    lane keeps its container, and a lane with none up is served as before (first containers
    first, then a head waiting for a GPU). No head waits for a GPU while a Share applies, so
    the executions a lane's opening passes all wait behind containers of their own model.
    """

    rule: ShareRule
    expected_s: ExpectedSeconds
    # GPUs each region's containers freed (scaled down) since the last round.
    freed: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Admission:
    """An execution to start now (already marked running) and its container after placing."""

    execution: Execution
    container: Container
    opened: bool


@dataclass(frozen=True)
class Waits:
    """Why what stays queued waits, as of one round.

    `executions` has each execution the round looked at and did not start. The round looks
    no further into a lane than its first execution that waits, nor into a region once
    nothing more can start there: `lanes` and `regions` say why for those.
    """

    executions: Mapping[str, Wait] = field(default_factory=dict)
    lanes: Mapping[tuple[str, str], Wait] = field(default_factory=dict)
    regions: Mapping[str, Wait] = field(default_factory=dict)

    def of(self, e: Execution) -> Wait | None:
        """Why `e` waits; None if the round did not get to it (it had its limit, or `e` is
        newer than the round)."""
        found = self.executions.get(e.id)
        if found is None:
            found = self.lanes.get((e.region, e.model))
        if found is None:
            found = self.regions.get(e.region)
        return found


@dataclass(frozen=True)
class Decision:
    admissions: tuple[Admission, ...]
    # The next instant the answer may change with no event: a backoff ends or a GPU frees.
    wake_at: float | None
    waits: Waits = field(default_factory=Waits)


def queue_key(
    execution: Execution, now: float = 0.0, aging_s: float | None = None
) -> tuple[int, int]:
    """Order within a region: higher (aged) priority first, then queue order.

    Aging adds the same amount to executions queued at the same time, so among equal
    priorities the order stays first come, first served.
    """
    priority = execution.priority
    if aging_s:
        priority += int(max(0.0, now - execution.queued_at) // aging_s)
    return (-priority, execution.seq)


@dataclass
class _RegionWalk:
    blocked_models: set[str] = field(default_factory=set)
    # The first execution of the region that waits for a GPU, when one does.
    gpu_head: str | None = None
    closed: bool = False  # nothing more can start in this region this round


class _Round:
    """One admission round: the ledger as placed so far, and where each region's walk stands.

    Both drivers (the full scan in `decide`, the lane heads in `decide_indexed`) feed it the
    same executions in the same order; only `consider` decides.
    """

    def __init__(
        self,
        containers: Iterable[Container],
        topology: Topology,
        now: float,
        closed: frozenset[str],
        cooling: Mapping[str, float],
        limit: int | None = None,
    ) -> None:
        self.topology = topology
        self.now = now
        self.limit = limit
        self.closed = closed
        self.cooling = frozenset(name for name, until in cooling.items() if until > now)
        shared = topology.shared
        self.live = {c.id: c for c in ledger.held(containers, now, shared)}
        use = ledger.usage(self.live.values(), now, shared)
        self.region_used = Counter(use.by_region)
        self.total_used = use.total
        self.running = Counter({r: 0 for r in topology.regions})
        for c in self.live.values():
            self.running[c.region] += len(c.in_flight)
        self.walks = {r: _RegionWalk() for r in topology.regions}
        # The oldest execution waiting for a GPU of the account (its region has room).
        self.account_head: str | None = None
        # GPUs the lanes' heads would need if each waited for one: per region, in all.
        self.need: Counter[str] = Counter()
        self.need_total = 0
        # Set by share(): how many containers each lane may open this round (None: any).
        self.quota: Counter[tuple[str, str]] | None = None
        self.admissions: list[Admission] = []
        self.started: set[str] = set()  # admitted this round (open_first's come up again)
        self.waits: dict[str, Wait] = {}
        self.lane_waits: dict[tuple[str, str], Wait] = {}
        self.region_waits = {
            r: Wait(WaitCode.REGION_CLOSED, r, "") for r in closed if r in topology.regions
        }
        self.wake_at: float | None = None
        for c in self.live.values():
            if not c.in_flight:
                self.wake(c.warm_until)
        for until in cooling.values():
            self.wake(until)  # a provider back from its cooldown may take what waits

    def open_first(
        self, heads: Iterable[Execution], key: Callable[[Execution], tuple[int, int]]
    ) -> None:
        """Before the walk, the heads of lanes with no container of their model up open one
        on the GPUs free now, oldest first: each model in a region gets a container before
        any opens a second. Only heads of their region's highest priority, and never where
        a region runs one call at a time (strict FIFO). A head that cannot open now is left
        to the walk, in its place: this pass makes no one wait (see the module's docstring)."""
        heads = list(heads)
        top: dict[str, int] = {}
        for e in heads:
            top[e.region] = min(top.get(e.region, key(e)[0]), key(e)[0])
        for e in sorted(heads, key=key):
            region = self.topology.regions.get(e.region)
            if region is None or key(e)[0] != top[e.region] or region.max_running == 1:
                continue
            if region.max_running is not None and self.running[e.region] >= region.max_running:
                continue
            if e.not_before > self.now or not self.region_open(e.region):
                continue
            if e.deadline_at is not None and e.deadline_at <= self.now:
                continue
            providers = self.usable(self.topology.providers_for(e.region, e.model))
            if not providers or _model_up(self.live.values(), providers, e.model):
                continue
            gpus = self.topology.gpus(e.model)
            if self.region_used[e.region] + gpus > region.gpu_limit:
                continue
            if self.total_used + gpus > self.topology.gpu_limit or self.full:
                continue
            if (opener := _provider_with_room(self.live.values(), providers, e.model)) is not None:
                self._open(e, opener, gpus)

    def allot(
        self,
        share: Share | None,
        heads: Mapping[tuple[str, str], Execution],
        queued: Mapping[tuple[str, str], int],
        key: Callable[[Execution], tuple[int, int]],
    ) -> None:
        """Before the walk, when `share` applies (see Share), which lanes may open how many
        containers on the account's free GPUs. `heads`: each lane's first execution;
        `queued`: how many wait in each lane. Only lanes whose head has its region's highest
        priority take part, as in first containers first."""
        if share is None or share.rule is ShareRule.OLDEST or not self.topology.account_may_bind:
            return
        up: dict[tuple[str, str], int] = {}
        top: dict[str, int] = {}
        for (region, model), e in heads.items():
            providers = self.usable(self.topology.providers_for(region, model))
            if providers and self.region_open(region):
                up[(region, model)] = _containers_up(self.live.values(), providers, model)
                top[region] = min(top.get(region, key(e)[0]), key(e)[0])
        if not all(up.values()):
            return  # a lane's head opens or waits for a GPU, as in the walk alone
        lanes = {
            lane: _Lane(queued[lane], queued[lane] * share.expected_s(*lane), containers)
            for lane, containers in up.items()
            if key(heads[lane])[0] == top[lane[0]]
        }
        allotment = _Allotment(self, lanes)
        if share.rule is ShareRule.RECLAIM:
            for region, gpus in share.freed.items():
                allotment.give(gpus, region)
        allotment.give(allotment.free)
        self.quota = allotment.quota

    def expect(self, lanes: Iterable[tuple[str, str]]) -> None:
        """The (region, model) lanes with executions to walk, before the walk: what backfill
        must leave for their heads (see _spares)."""
        if not self.topology.backfill:
            return
        for region, model in lanes:
            providers = self.usable(self.topology.providers_for(region, model))
            if not _model_up(self.live.values(), providers, model):
                self.need[region] += self.topology.gpus(model)
        self.need_total = sum(self.need.values())

    def wake(self, at: float | None) -> None:
        if at is not None and at > self.now and (self.wake_at is None or at < self.wake_at):
            self.wake_at = at

    def region_open(self, region: str) -> bool:
        """Whether anything more can start in `region` this round."""
        return region not in self.closed and not self.walks[region].closed

    def lane_open(self, region: str, model: str) -> bool:
        """Whether executions of `model` in `region` can still start this round."""
        return self.region_open(region) and model not in self.walks[region].blocked_models

    def usable(self, providers: list[ProviderSpec]) -> list[ProviderSpec]:
        """The providers not cooling down, or all of them when every one is."""
        if not self.cooling:
            return providers
        healthy = [p for p in providers if p.name not in self.cooling]
        return healthy or providers

    @property
    def full(self) -> bool:
        """Whether the round has admitted its limit: what follows waits for the next one."""
        return self.limit is not None and len(self.admissions) >= self.limit

    def decision(self) -> Decision:
        # A full round asks for the next at once: it stopped short, nothing else holds it.
        waits = Waits(self.waits, self.lane_waits, self.region_waits)
        return Decision(tuple(self.admissions), self.now if self.full else self.wake_at, waits)

    def consider(self, e: Execution) -> None:
        """Admit `e` now, or note why it waits and what that holds back behind it."""
        if e.deadline_at is not None and e.deadline_at <= self.now:
            return  # expired, not waiting: it blocks no one
        if e.id in self.started or not self.lane_open(e.region, e.model):
            return
        providers = self.usable(self.topology.providers_for(e.region, e.model))
        if not providers:
            return  # refused at submission; never blocks anyone
        wait = self._start_or_wait(e, providers)
        if wait is not None:
            self.waits[e.id] = wait

    def _start_or_wait(self, e: Execution, providers: list[ProviderSpec]) -> Wait | None:
        """Admit `e`, or say why it waits (and block what waits behind it)."""
        region = self.topology.regions[e.region]
        if e.not_before > self.now:
            self.wake(e.not_before)
            wait = Wait(WaitCode.BACKOFF, e.region, e.model, until=e.not_before)
            self._block_lane(e, wait)
            if region.max_running == 1:  # the seed's sequential mode is strict FIFO
                self._close_region(e.region, _behind(e, wait))
            return wait
        if region.max_running is not None and self.running[e.region] >= region.max_running:
            wait = Wait(WaitCode.MAX_RUNNING, e.region, e.model, limit=region.max_running)
            self._close_region(e.region, wait)
            return wait
        walk = self.walks[e.region]
        held_for = walk.gpu_head or self.account_head
        slot = _free_slot(self.live.values(), providers, e.model, self._may_take(held_for))
        if slot is not None:
            self._place(e, ledger.occupy(slot, e.id), opened=False)
            return None
        gpus = self.topology.gpus(e.model)
        region_fits = self.region_used[e.region] + gpus <= region.gpu_limit
        global_fits = self.total_used + gpus <= self.topology.gpu_limit
        opener = None
        if region_fits and global_fits and not held_for and self._allotted(e):
            opener = _provider_with_room(self.live.values(), providers, e.model)
        if opener is not None:
            if self.quota is not None:
                self.quota[(e.region, e.model)] -= 1
            self._open(e, opener, gpus)
            return None
        model_up = _model_up(self.live.values(), providers, e.model)
        wait = self._why_no_room(e, providers, held_for, region_fits, global_fits, model_up)
        if not model_up:  # it waits for a GPU
            if walk.gpu_head is None:
                walk.gpu_head = e.id
            if region_fits and not global_fits and self.account_head is None:
                self.account_head = e.id
        self._block_lane(e, wait)
        if region.max_running == 1:  # strict FIFO: nothing passes a waiting head
            self._close_region(e.region, _behind(e, wait))
        return wait

    def _allotted(self, e: Execution) -> bool:
        """Whether share() left `e`'s lane a free GPU to open a container on."""
        return self.quota is None or self.quota[(e.region, e.model)] > 0

    def _may_take(self, held_for: str | None) -> Callable[[Container], bool] | None:
        """Which idle containers a call may be booked on now (None: none).

        While an execution waits for a GPU (`held_for`), the rule before backfill kept every
        idle container from reuse. Backfill keeps only what a waiting head may need: with
        several inputs per container the provider may keep an idle one held past its warm
        window (ledger.held), so then nothing is spared either.
        """
        if held_for is None:
            return _any
        if self.topology.backfill and not self.topology.shared:
            return self._spares
        return None

    def _spares(self, c: Container) -> bool:
        """Whether a call may take idle `c` and no head that waits, or may wait in this round,
        for a GPU gets one later for it (promise 2 in its strong form).

        Every lane's head with no container of its model up may wait for GPUs in its region
        and in the account; it would get the first to free there (free ones now, then idle
        containers as they expire). Booking on `c` keeps its GPUs warm longer, so it is
        allowed only when that changes none of the instants at which the first GPUs free,
        as many as those heads need (in its region and in the account). Containers of calls
        in flight are left out, so that stays true whenever they end. The account's first
        GPUs are kept only when its limit can bind before the regions' do.
        """
        if not _keeps_first(self._frees(c.region), c.warm_until, c.gpus, self.need[c.region]):
            return False
        return not self.topology.account_may_bind or _keeps_first(
            self._frees(None), c.warm_until, c.gpus, self.need_total
        )

    def _frees(self, region: str | None) -> list[float]:
        """When the GPUs of `region` (None: of the account) free, those known: now for
        those free, then idle and orphaned containers' warm ends, in time order."""
        if region is None:
            free = self.topology.gpu_limit - self.total_used
        else:
            free = self.topology.regions[region].gpu_limit - self.region_used[region]
        instants = [self.now] * max(0, free)
        for c in self.live.values():
            if not c.in_flight and (region is None or c.region == region):
                instants += [c.warm_until] * c.gpus
        return sorted(instants)

    def _why_no_room(
        self,
        e: Execution,
        providers: list[ProviderSpec],
        held_for: str | None,
        region_fits: bool,
        global_fits: bool,
        model_up: bool,
    ) -> Wait:
        """Why `e` neither reuses a container nor opens one (the round's state says)."""
        region, model = e.region, e.model
        live = self.live.values()
        if held_for and _free_slot(live, providers, model, _any) is not None:
            # An idle container of its model would serve it, but keeps a GPU warm.
            return Wait(WaitCode.GPU_RESERVED, region, model, behind=held_for)
        if _provider_with_room(live, providers, model) is None:
            limit = max(p.max_containers or 0 for p in providers)
            return Wait(WaitCode.MAX_CONTAINERS, region, model, limit=limit)
        if not region_fits or not global_fits or not self._allotted(e):
            if model_up:
                return Wait(WaitCode.BEHIND_CONTAINER, region, model)
            if not region_fits:
                limit = self.topology.regions[region].gpu_limit
                return Wait(WaitCode.NO_GPU_IN_REGION, region, model, limit=limit)
            limit = self.topology.gpu_limit
            return Wait(WaitCode.NO_GPU_IN_ACCOUNT, region, model, limit=limit)
        return Wait(WaitCode.GPU_RESERVED, region, model, behind=held_for)

    def _block_lane(self, e: Execution, wait: Wait) -> None:
        """Later executions of `e`'s model in its region wait behind it."""
        self.walks[e.region].blocked_models.add(e.model)
        self.lane_waits[(e.region, e.model)] = _behind(e, wait)

    def _close_region(self, region: str, wait: Wait) -> None:
        """Nothing more starts in `region` this round; what is left there waits for `wait`."""
        self.walks[region].closed = True
        self.region_waits[region] = wait

    def _place(self, e: Execution, placed: Container, *, opened: bool) -> None:
        self.admissions.append(Admission(_started(e, placed, self.now), placed, opened))
        self.started.add(e.id)
        self.live[placed.id] = placed
        self.running[e.region] += 1

    def _open(self, e: Execution, provider: ProviderSpec, gpus: int) -> None:
        placed = Container(
            id=_new_container_id(e, self.now, self.live),
            provider=provider.name,
            model=e.model,
            region=e.region,
            gpus=gpus,
            in_flight=(e.id,),
        )
        self.region_used[e.region] += gpus
        self.total_used += gpus
        self._place(e, placed, opened=True)


@dataclass(frozen=True)
class _Lane:
    """A lane as Share sees it: executions queued, their expected seconds, containers up."""

    queued: int
    work_s: float
    up: int


class _Allotment:
    """The account's free GPUs as Share hands them out, one container at a time, each to
    the lane with the most expected work per container that can take one."""

    def __init__(self, round_: _Round, lanes: Mapping[tuple[str, str], _Lane]) -> None:
        self.topology = round_.topology
        self.lanes = lanes
        self.quota: Counter[tuple[str, str]] = Counter()
        self.held = Counter(round_.region_used)
        self.running = Counter(round_.running)
        self.free = self.topology.gpu_limit - round_.total_used

    def give(self, gpus: int, region: str | None = None) -> None:
        """Up to `gpus` GPUs, to lanes of `region` (None: of any)."""
        left = gpus
        while left > 0 and (lane := self._best(region, left)) is not None:
            taken = self.topology.gpus(lane[1])
            self.quota[lane] += 1
            self.held[lane[0]] += taken
            self.running[lane[0]] += 1
            self.free -= taken
            left -= taken

    def _best(self, region: str | None, gpus: int) -> tuple[str, str] | None:
        best: tuple[float, tuple[str, str]] | None = None
        for lane, seen in self.lanes.items():
            if region is not None and lane[0] != region:
                continue
            containers = seen.up + self.quota[lane]
            if containers >= seen.queued:
                continue  # each of its executions would have a container
            if self._fits(lane, min(gpus, self.free)):
                per_container = seen.work_s / containers
                if best is None or per_container > best[0]:
                    best = (per_container, lane)
        return None if best is None else best[1]

    def _fits(self, lane: tuple[str, str], gpus: int) -> bool:
        region, model = lane
        limits = self.topology.regions[region]
        needed = self.topology.gpus(model)
        if needed > gpus or self.held[region] + needed > limits.gpu_limit:
            return False
        return limits.max_running is None or self.running[region] < limits.max_running


def _any(_: Container) -> bool:
    return True


def _keeps_first(instants: list[float], at: float, gpus: int, need: int) -> bool:
    """Whether the first `need` of these sorted instants stay the same without `gpus` of
    the ones at `at`."""
    if need <= 0:
        return True
    rest = list(instants)
    for _ in range(gpus):
        rest.remove(at)
    return rest[:need] == instants[:need]


def _behind(e: Execution, wait: Wait) -> Wait:
    """What an execution behind `e` in its queue waits for: `e`, which waits for `wait`."""
    return Wait(WaitCode.BEHIND_EARLIER, e.region, e.model, behind=e.id, cause=wait)


def decide(
    queued: Iterable[Execution],
    containers: Iterable[Container],
    topology: Topology,
    now: float,
    closed: frozenset[str] = frozenset(),
    cooling: Mapping[str, float] | None = None,
    limit: int | None = None,
    share: Share | None = None,
) -> Decision:
    """The admissions that keep every promise at `now`, and when to decide again.

    The reference: it walks every queued execution. Regions in `closed` (paused or
    draining) admit nothing and block no one elsewhere. Executions past their deadline are
    never admitted: the caller expires them. `cooling`: providers cooling down, each with the
    instant its cooldown ends (core.health). `limit`: admit at most that many, the first
    ones in the walk, and ask to decide again at once (`wake_at` = `now`); the next round
    walks the queue from its head again and so goes on where this one stopped. `share`: how
    the account's free GPUs are handed out once every lane has a container (see Share).
    """
    round_ = _Round(containers, topology, now, closed, cooling or {}, limit)
    walked = list(_interleaved(queued, topology, now))
    heads: dict[tuple[str, str], Execution] = {}
    for e in walked:
        if e.deadline_at is None or e.deadline_at > now:
            heads.setdefault((e.region, e.model), e)

    def key(e: Execution) -> tuple[int, int]:
        return queue_key(e, now, topology.priority_aging_s)

    round_.open_first(heads.values(), key)
    round_.allot(share, heads, Counter((e.region, e.model) for e in walked), key)
    round_.expect(
        {
            (e.region, e.model)
            for e in walked
            if e.region not in closed
            and (e.deadline_at is None or e.deadline_at > now)
            and topology.providers_for(e.region, e.model)
        }
    )
    for e in walked:
        if round_.full:
            break
        if e.deadline_at is not None:
            round_.wake(e.deadline_at)
        round_.consider(e)
    return round_.decision()


def decide_indexed(
    index: QueueIndex,
    containers: Iterable[Container],
    topology: Topology,
    now: float,
    closed: frozenset[str] = frozenset(),
    cooling: Mapping[str, float] | None = None,
    limit: int | None = None,
    share: Share | None = None,
) -> Decision:
    """Exactly `decide` over the indexed executions, touching lane heads only.

    A lane is walked only while it can still start something; a lane, once blocked, and a
    region, once closed, are dropped, since the full scan would skip all that follows in
    them. The regions take turns as in the full scan (QueueIndex.turn). With priority aging
    the order changes with time rather than with writes, so the full scan decides.
    """
    if topology.priority_aging_s:
        return decide(index, containers, topology, now, closed, cooling, limit, share)
    round_ = _Round(containers, topology, now, closed, cooling or {}, limit)
    round_.wake(index.next_deadline(now))
    Lane = tuple[tuple[int, int], str, Iterator[Execution], Execution]
    turns: list[tuple[int, int, list[Lane], str]] = []
    for order, region in enumerate(index.regions()):
        if region not in topology.regions or region in closed:
            continue
        lanes: list[Lane] = []
        for model, walk in index.lanes(region).items():
            head = _next_live(walk, now)
            if head is not None and topology.providers_for(region, model):
                lanes.append((queue_key(head), model, walk, head))
        heapq.heapify(lanes)
        if lanes:
            turns.append((index.turn(lanes[0][3]), order, lanes, region))
    round_.open_first((lane[3] for _, _, lanes, _ in turns for lane in lanes), queue_key)
    if share is not None:
        heads = {(region, model): e for _, _, lanes, region in turns for _, model, _, e in lanes}
        round_.allot(share, heads, index.lane_sizes(), queue_key)
    round_.expect((region, model) for _, _, lanes, region in turns for _, model, _, _ in lanes)
    heapq.heapify(turns)
    while turns and not round_.full:
        _, order, lanes, region = heapq.heappop(turns)
        _, model, walk, e = heapq.heappop(lanes)
        round_.consider(e)
        if not round_.region_open(region):
            continue
        if round_.lane_open(region, model) and (following := _next_live(walk, now)) is not None:
            heapq.heappush(lanes, (queue_key(following), model, walk, following))
        if lanes:
            heapq.heappush(turns, (index.turn(lanes[0][3]), order, lanes, region))
    return round_.decision()


def _next_live(walk: Iterator[Execution], now: float) -> Execution | None:
    """The lane's next execution that has not passed its deadline."""
    for e in walk:
        if e.deadline_at is None or e.deadline_at > now:
            return e
    return None


def positions(
    queued: Iterable[Execution], now: float = 0.0, aging_s: float | None = None
) -> dict[str, int]:
    """Each queued execution's place in its region's queue, 1 = first."""
    by_region: dict[str, list[Execution]] = {}
    for e in queued:
        by_region.setdefault(e.region, []).append(e)
    result = {}
    for executions in by_region.values():
        ordered = sorted(executions, key=lambda e: queue_key(e, now, aging_s))
        for place, e in enumerate(ordered, start=1):
            result[e.id] = place
    return result


def _interleaved(
    queued: Iterable[Execution], topology: Topology, now: float
) -> Iterable[Execution]:
    """Every region's queue in order, the regions' next executions merged oldest first."""
    by_region: dict[str, list[Execution]] = {}
    for e in queued:
        if e.state is ExecutionState.QUEUED and e.region in topology.regions:
            by_region.setdefault(e.region, []).append(e)

    def key(e: Execution) -> tuple[int, int]:
        return queue_key(e, now, topology.priority_aging_s)

    iterators = [iter(sorted(q, key=key)) for q in by_region.values()]
    heads: list[tuple[int, int, Execution]] = []
    for index, it in enumerate(iterators):
        first = next(it, None)
        if first is not None:
            heads.append((first.seq, index, first))
    heapq.heapify(heads)
    while heads:
        _, index, e = heapq.heappop(heads)
        yield e
        following = next(iterators[index], None)
        if following is not None:
            heapq.heappush(heads, (following.seq, index, following))


def _free_slot(
    live: Iterable[Container],
    providers: list[ProviderSpec],
    model: str,
    may_take: Callable[[Container], bool] | None,
) -> Container | None:
    """The ledger entry a call for `model` takes without opening a container, if any;
    an idle one only if `may_take` it (None: no idle one at all).

    The provider, not the router, picks which of its free containers serves a call. The
    ledger stays an upper bound whatever it picks because the call is booked on an idle
    entry of that provider that expires first (a busy container's free slot only when no
    idle one may be used): the entries left idle then expire no earlier than the provider's
    own do. An orphan whose lost call may have ended is a container the provider may pick
    too: when it expires before the idle ones, the call is booked on the orphan, and they
    keep their later expiry. Only an orphan of the same provider: the call goes to the idle
    one's provider, which picks among its own containers, never another's (another
    provider's orphan may still be running its lost call). So a provider whose entries that
    expire first may not be taken takes no call on its idle containers, however many others
    it has. (Releases keep idle siblings warm as well: ledger.warm_siblings.)
    """
    max_inputs = {p.name: p.max_inputs for p in providers}
    pool = [c for c in live if c.provider in max_inputs and c.model == model]
    idle = [] if may_take is None else [c for c in pool if not c.in_flight and not c.orphan]
    tried: set[str] = set()
    # Providers in the order of their idle entry expiring first, as the call would go.
    for first in sorted(idle, key=lambda c: (c.warm_until, c.id)):
        if first.provider in tried:
            continue
        tried.add(first.provider)
        free = [c for c in pool if c.provider == first.provider and not c.in_flight]
        earliest = min(c.warm_until for c in free)
        assert may_take is not None  # else nothing is idle
        bookable = [c for c in free if c.warm_until == earliest and may_take(c)]
        if bookable:
            return min(bookable, key=lambda c: (c.orphan, c.id))
    busy = [
        c
        for c in pool
        if c.in_flight and not c.orphan and len(c.in_flight) < max_inputs[c.provider]
    ]
    return min(busy, key=lambda c: (c.warm_until, c.id)) if busy else None


def _provider_with_room(
    live: Iterable[Container], providers: list[ProviderSpec], model: str
) -> ProviderSpec | None:
    open_count = Counter(c.provider for c in live if c.model == model)
    for p in providers:
        if p.max_containers is None or open_count[p.name] < p.max_containers:
            return p
    return None


def opened_its_container(e: Execution) -> bool:
    """Whether `e`'s call (running or done) opened the container it ran on, and so paid a
    cold start: a container is named after the execution that opens it."""
    return e.container_id is not None and e.container_id.startswith(f"{e.id}@")


def _new_container_id(e: Execution, now: float, live: Mapping[str, Container]) -> str:
    """Named after the execution that opens it (see opened_its_container), never reused."""
    base = container_id = f"{e.id}@{now:.6f}"
    suffix = 0
    while container_id in live:  # e lost its call and is opening again in the same instant
        suffix += 1
        container_id = f"{base}.{suffix}"
    return container_id


def _model_up(live: Iterable[Container], providers: list[ProviderSpec], model: str) -> bool:
    return _containers_up(live, providers, model) > 0


def _containers_up(live: Iterable[Container], providers: list[ProviderSpec], model: str) -> int:
    names = {p.name for p in providers}
    return sum(1 for c in live if c.provider in names and c.model == model and not c.orphan)


def _started(execution: Execution, container: Container, now: float) -> Execution:
    return evolve(
        execution,
        state=ExecutionState.RUNNING,
        attempts=execution.attempts + 1,
        started_at=now,
        provider=container.provider,
        container_id=container.id,
    )
