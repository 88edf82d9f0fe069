"""What a test needs that this machine lacks: skipped locally, a failure in CI."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(message: str) -> NoReturn:
    """Skip the test for lack of `message`'s part, or fail it where CI=true: CI installs
    everything the suite needs, so a part missing there is a broken run, not a skip."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)
