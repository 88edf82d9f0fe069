"""Leadership: one scheduler per store, and a standby that takes over when the lease lapses.

With SQLite the scheduler lock is a file lock held until the process ends, so a second
process cannot lead and refuses to start. With Redis it is a lease with a TTL and a fencing
token: the leader renews it; a standby campaigns for it and, on winning, recovers what the
old leader left running (promise 1) before admitting anything. A leader that cannot renew
in time — paused, partitioned, or Redis down — steps down, closing its calls; every write it
might still attempt is refused by the store's fencing check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from hybrid_router import errors
from hybrid_router.runtime.manager import RegionQueueManager
from hybrid_router.store.base import Store

log = logging.getLogger(__name__)


class Leadership:
    """Runs a RegionQueueManager exactly while this process holds the scheduler lock."""

    def __init__(
        self,
        store: Store,
        make_manager: Callable[[], RegionQueueManager],
        *,
        shutdown_grace_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.make_manager = make_manager
        self.shutdown_grace_s = shutdown_grace_s
        self.clock = clock
        self.manager: RegionQueueManager | None = None
        self._campaign: asyncio.Task[None] | None = None
        # Set by stop(): the campaign ends at its next step even if the cancel that stop()
        # sends is lost (a library that turns a CancelledError into its own timeout error,
        # which the loop takes for a store away, would keep it renewing forever).
        self._stopping = False

    @property
    def is_leader(self) -> bool:
        return self.manager is not None

    async def start(self) -> None:
        """Lead if the lock is free; with a lease-based store, otherwise stand by."""
        if await self._try_to_lead():
            pass
        elif self.store.lease_ttl_s is None:
            raise errors.ConfigError(
                "another hybrid-router is already scheduling on this store; "
                "stop it first or give this one its own store"
            )
        if self.store.lease_ttl_s is not None:
            self._campaign = asyncio.create_task(self._campaign_loop(), name="leader campaign")

    async def stop(self) -> None:
        """Stop campaigning; as leader, let running calls finish within the grace period."""
        self._stopping = True
        if self._campaign is not None:
            self._campaign.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._campaign
        if self.manager is not None:
            await self.manager.stop(self.shutdown_grace_s)
            self.manager = None
            with contextlib.suppress(errors.RouterError):
                await self.store.release_scheduler_lock()

    def wake(self) -> None:
        """Ask the scheduler (if this process runs it) to decide again."""
        if self.manager is not None:
            self.manager.wake()

    async def cancel_running(self, execution_ids: list[str]) -> None:
        """Close these calls if this process runs them."""
        if self.manager is not None:
            await self.manager.cancel_running(execution_ids)

    async def _try_to_lead(self) -> bool:
        try:
            acquired = await self.store.acquire_scheduler_lock()
        except errors.StoreUnavailable as exc:
            log.warning("cannot reach the store to campaign: %s", exc.message)
            return False
        if acquired:
            manager = self.make_manager()
            try:
                await manager.start()
            except errors.RouterError as exc:
                log.warning("won the lease but could not start scheduling: %s", exc.message)
                await manager.stop(0)
                return False
            except asyncio.CancelledError:
                # Stopped while starting: its tasks would otherwise run on, owned by no one.
                await manager.stop(0)
                raise
            self.manager = manager
            log.info("this replica now leads the scheduling")
        return acquired

    async def _campaign_loop(self) -> None:
        ttl = self.store.lease_ttl_s
        assert ttl is not None
        renewed_at = self.clock()
        while not self._stopping:
            manager = self.manager
            if manager is None:
                await asyncio.sleep(ttl / 3)
                if not self._stopping and await self._try_to_lead():
                    renewed_at = self.clock()
                continue
            # asyncio.timeout, not wait_for: on 3.11 a cancel that lands as wait_for times
            # out comes out as TimeoutError, and the loop would go on after stop().
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ttl / 3):
                    await manager.fenced.wait()
            if manager.fenced.is_set():
                await self._step_down("a newer leader fenced this one off")
                continue
            try:
                still_ours = await self.store.renew_scheduler_lock()
            except errors.StoreUnavailable:
                # Unknown: Redis may still hold our lease. Keep leading until it surely lapsed.
                still_ours = self.clock() - renewed_at < ttl * 2 / 3
            else:
                if still_ours:
                    renewed_at = self.clock()
            if not still_ours:
                await self._step_down("the lease could not be renewed")

    async def _step_down(self, why: str) -> None:
        manager, self.manager = self.manager, None
        if manager is not None:
            log.warning("stepping down: %s", why)
            # Calls are abandoned: the next leader holds their GPUs and runs them again.
            await manager.stop(0)
