"""The leader's index is built without the collector and left out of its later walks."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from hybrid_router.runtime.memory import NO_FREEZE_ENV, long_lived


@pytest.fixture(autouse=True)
def _restore_collector() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    if enabled:
        gc.enable()


class _Entry:
    """Stands for an indexed execution: an object the collector tracks."""


def _walked(objects: list[_Entry]) -> int:
    """How many of these the collector's generations hold (frozen ones are in none)."""
    ids = {id(o) for o in gc.get_objects()}
    return sum(id(o) in ids for o in objects)


def test_objects_built_are_frozen_and_the_collector_runs_again() -> None:
    with long_lived():
        assert not gc.isenabled()  # no walk while the many objects are made
        built = [_Entry() for _ in range(1_000)]
    assert gc.isenabled()
    assert _walked(built) == 0
    later = [_Entry() for _ in range(10)]
    assert _walked(later) == len(later)


def test_the_collector_runs_again_when_the_build_fails() -> None:
    with pytest.raises(RuntimeError), long_lived():
        raise RuntimeError("the store went away")
    assert gc.isenabled()


def test_a_collector_disabled_before_stays_disabled() -> None:
    gc.disable()
    with long_lived():
        pass
    assert not gc.isenabled()


def test_nothing_is_frozen_when_asked_not_to(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NO_FREEZE_ENV, "1")
    with long_lived():
        assert gc.isenabled()
        built = [_Entry() for _ in range(1_000)]
    assert _walked(built) == len(built)
