"""The cyclic garbage collector and the queue the leader keeps in memory.

CPython's full collection walks every object the collector tracks, so with 100,000
executions indexed each one stops the event loop for a fifth of a second, and building
the index (reading the queue from the store) set off several of them. The objects built
here live as long as the index and hold no reference cycles: they are left out of the
collector's walks (`gc.freeze`), and reference counting still frees each one when it
leaves the index.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator

# Set to keep every object in the collector's walks (to compare, or to debug a leak).
NO_FREEZE_ENV = "HYBRID_ROUTER_GC_NO_FREEZE"
# Set to keep CPython's default collection thresholds (to compare).
DEFAULT_THRESHOLDS_ENV = "HYBRID_ROUTER_GC_DEFAULT_THRESHOLDS"
# A young collection every this many allocations (CPython's default: 700), a middle one
# every 20 young ones, a full one every 100 middle ones at most. Executions submitted while
# the router runs are not frozen (see long_lived): the queue they make grows with what is
# queued, and so did the collections' walks over it. Draining 50,000 executions took 304 ms
# of CPU per 1,000 with the defaults, 219 ms with these (150-160 ms at 1,000 either way;
# benchmarks/throughput.py, with DEFAULT_THRESHOLDS_ENV set and not).
THRESHOLDS = (50_000, 20, 100)


def tune_collector() -> None:
    """Collect garbage cycles less often than CPython's defaults (see THRESHOLDS)."""
    if not os.environ.get(DEFAULT_THRESHOLDS_ENV):
        gc.set_threshold(*THRESHOLDS)


@contextlib.contextmanager
def long_lived() -> Iterator[None]:
    """Build many long-lived objects without the collector walking them meanwhile, then
    freeze everything alive (what a starting process holds: modules, the app, the index).

    Garbage cycles alive at that moment would never be collected, so a full collection
    runs first, while the heap is still small.
    """
    if os.environ.get(NO_FREEZE_ENV):
        yield
        return
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
        gc.freeze()
