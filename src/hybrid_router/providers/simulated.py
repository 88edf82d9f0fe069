"""A seeded model of a serverless GPU provider account (cold starts, scaledown, GPU limit).

Timings are production seconds (section 1 of the design) multiplied by `time_scale`, so a
demo or a test runs the same story in milliseconds. Every container holds one GPU and takes
`max_inputs` requests at once; it stays up, holding its GPU, for `scaledown_window_s` after
its last request, and opening one more container than the account's `gpu_limit` allows is
refused at once, as Modal answers 429.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from hybrid_router.core.model import Completion, Failure, FailureKind, ProviderSpec
from hybrid_router.providers.base import InferenceRequest, ProviderFailure, deadline

# Production seconds, from the design's section 1.
COLD_START_S = (30.0, 45.0)
SMALL_MODEL_S = (30.0, 45.0)
LARGE_MODEL_S = (150.0, 160.0)
SCALEDOWN_WINDOW_S = 120.0


@dataclass
class _Container:
    id: str
    region: str
    model: str
    ready_at: float  # end of its cold start
    in_flight: int = 0
    warm_until: float = 0.0

    def held(self, now: float) -> bool:
        return self.in_flight > 0 or self.warm_until > now


class SimulatedCloud:
    """One provider account: containers per (region, model) sharing one GPU limit.

    `scaledown_window_s` is in real (already scaled) seconds; it must not exceed the window
    the router is configured with, or the router would reopen GPUs the cloud still holds.
    Tests may set `fail_next` (the next N calls fail transiently) and `down` (every call
    fails as unreachable).
    """

    def __init__(
        self,
        gpu_limit: int,
        time_scale: float = 1.0,
        scaledown_window_s: float | None = None,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_inputs: int = 1,
    ) -> None:
        if gpu_limit < 0 or time_scale <= 0 or max_inputs < 1:
            raise ValueError("need gpu_limit >= 0, time_scale > 0 and max_inputs >= 1")
        self.gpu_limit = gpu_limit
        self.time_scale = time_scale
        self.scaledown_window_s = (
            SCALEDOWN_WINDOW_S * time_scale if scaledown_window_s is None else scaledown_window_s
        )
        self.max_inputs = max_inputs
        self.fail_next = 0
        self.down = False
        self._rng = random.Random(seed)
        self._clock = clock
        self._ids = itertools.count(1)
        self._containers: list[_Container] = []
        self._arrivals: list[tuple[str, str, str]] = []
        self._peak = 0
        self._peak_by_region: dict[str, int] = {}
        self._counts = dict.fromkeys(
            ("refusals", "completed", "failed", "cancelled", "cold_starts"), 0
        )

    async def run(self, request: InferenceRequest) -> Completion:
        """Run one request in a warm container of its (region, model), or cold-start one."""
        now = self._clock()
        self._arrivals.append((request.region, request.model, request.execution_id))
        if self.down:
            self._counts["failed"] += 1
            raise _failure("PROVIDER_UNAVAILABLE", "simulated outage", FailureKind.UNAVAILABLE)
        if self.fail_next > 0:
            self.fail_next -= 1
            self._counts["failed"] += 1
            raise _failure("PROVIDER_ERROR", "injected failure", FailureKind.TRANSIENT)
        self._expire(now)
        container = self._free_container(request.region, request.model)
        cold = container is None
        if container is None:
            container = self._open(request.region, request.model, now)
        container.in_flight += 1
        run_s = self._scaled(call_bounds(request.model))
        try:
            # A request arriving while its container still cold-starts waits for the start.
            await asyncio.sleep(max(0.0, container.ready_at - now) + run_s)
        except asyncio.CancelledError:
            self._counts["cancelled"] += 1
            raise
        finally:
            container.in_flight -= 1
            if container.in_flight == 0:
                container.warm_until = self._clock() + self.scaledown_window_s
        self._counts["completed"] += 1
        text = f"[simulated {request.model} in {request.region}] {request.text}"
        return Completion(
            response=text,
            inference_time=run_s,
            tokens_generated=min(request.max_tokens, len(text.split())),
            prompt_tokens=len(request.text.split()),
            metadata={"container_id": container.id, "cold_start": cold},
        )

    def stats(self) -> dict[str, object]:
        """GPUs held now and at peak (busy plus warm), refusals, counts and the arrival log."""
        now = self._clock()
        self._expire(now)
        held_by_region: dict[str, int] = {}
        for c in self._containers:
            held_by_region[c.region] = held_by_region.get(c.region, 0) + 1
        return {
            "gpu_limit": self.gpu_limit,
            "held": len(self._containers),
            "held_by_region": held_by_region,
            "busy": sum(1 for c in self._containers if c.in_flight),
            "peak_held": self._peak,
            "peak_held_by_region": dict(self._peak_by_region),
            **self._counts,
            "arrivals": list(self._arrivals),
        }

    def _expire(self, now: float) -> None:
        self._containers = [c for c in self._containers if c.held(now)]

    def _free_container(self, region: str, model: str) -> _Container | None:
        for c in self._containers:
            if c.region == region and c.model == model and c.in_flight < self.max_inputs:
                return c
        return None

    def _open(self, region: str, model: str, now: float) -> _Container:
        if len(self._containers) + 1 > self.gpu_limit:
            self._counts["refusals"] += 1
            raise _failure(
                "PROVIDER_CAPACITY",
                f"RESOURCE_EXHAUSTED: {len(self._containers)} of {self.gpu_limit} GPUs held",
                FailureKind.CAPACITY,
            )
        container = _Container(
            id=f"ct-{next(self._ids)}",
            region=region,
            model=model,
            ready_at=now + self._scaled(COLD_START_S),
        )
        self._containers.append(container)
        self._counts["cold_starts"] += 1
        self._peak = max(self._peak, len(self._containers))
        in_region = sum(1 for c in self._containers if c.region == region)
        self._peak_by_region[region] = max(self._peak_by_region.get(region, 0), in_region)
        return container

    def _scaled(self, bounds: tuple[float, float]) -> float:
        return self._rng.uniform(*bounds) * self.time_scale


def call_bounds(model: str) -> tuple[float, float]:
    """The production seconds one call of `model` takes, at least and at most."""
    return LARGE_MODEL_S if "7b" in model.lower() else SMALL_MODEL_S


def _failure(code: str, message: str, kind: FailureKind) -> ProviderFailure:
    return ProviderFailure(Failure(code, f"simulated cloud: {message}", kind))


class SimulatedProvider:
    """A provider for one region of a shared SimulatedCloud (the account)."""

    def __init__(self, spec: ProviderSpec, cloud: SimulatedCloud) -> None:
        self.spec = spec
        self.cloud = cloud

    async def run(self, request: InferenceRequest) -> Completion:
        """Run on the simulated cloud within `spec.timeout_s`."""
        async with deadline(self.spec):
            return await self.cloud.run(request)

    async def aclose(self) -> None:
        """Nothing to close: the cloud belongs to whoever created it."""
