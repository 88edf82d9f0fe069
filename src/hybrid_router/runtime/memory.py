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
