"""A bounded schemathesis run against the real app (SQLite, simulated providers) served on
127.0.0.1: every operation of the OpenAPI document, every check, as an admin, as a user and
without a key. No 5xx, every answer as documented.

Bodies are generated from the document, so most name models and regions that do not exist;
half the valid ones get real names, so accepted jobs (and what follows: listing, reading,
cancelling them) are exercised too.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.openapi.checks import RejectedPositiveData

from hybrid_router.api import create_app
from hybrid_router.settings import settings_from_mapping
from tests.api.conftest import default_config

KEYS = {"admin": "fuzz-admin-key", "user": "fuzz-user-key"}
MODELS = ["llama3.2-1b", "mistral-7b", "QWEN2.5-1.5B"]
REGIONS = ["US", "eu-west", "APAC"]
# Random examples per operation for each caller, besides (for the admin) the deterministic
# ones of schemathesis's coverage phase (10 to 150 per operation), and the time each caller may
# spend on one operation: at most about 30 s of requests for the whole run (15 operations).
EXAMPLES = {"admin": 40, "user": 25, "nobody": 10}
SECONDS_PER_OPERATION = {"admin": 1.2, "user": 0.6, "nobody": 0.3}


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve `app` with uvicorn on a free port of 127.0.0.1 in a thread; yields its URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name="fuzzed-router")
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the router failed to start")
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join()


def fuzz_config(store_dir: Path) -> dict[str, Any]:
    """The built-in config with an admin and a user, its store in `store_dir`."""
    users = {
        name: {"api_key_sha256": hashlib.sha256(key.encode()).hexdigest(), "role": name}
        for name, key in KEYS.items()
    }
    config = default_config(store_dir, users=users)
    for provider in config["providers"].values():
        provider["time_scale"] = 0.0005  # a 7B call in 80 ms: /inference waits little
    return config


def load_schema(*, coverage: bool) -> Any:
    """The app's own document, from an app that is never started (its store is never
    opened): pytest needs the operations when it collects the tests. `coverage`: run
    schemathesis's coverage phase (deterministic edge values) before the random examples."""
    document = create_app(settings_from_mapping(fuzz_config(Path("never-opened")))).openapi()
    loaded = schemathesis.openapi.from_dict(document)
    loaded.config.phases.coverage.enabled = coverage
    # The event streams answer until their job ends (/events never does), and schemathesis
    # reads a whole answer before judging it: tests/api/test_events.py covers them.
    return loaded.exclude(path_regex=r"events$")


# The admin reaches every operation: edge values and random ones. The others see the same
# validation (or only 401s): random examples are enough.
full = load_schema(coverage=True)
random_only = load_schema(coverage=False)


def flatmap_case(context: Any, case: Any) -> st.SearchStrategy[Any]:
    """Half the schema-valid job and inference bodies name models and regions that exist."""
    body = case.body
    if not isinstance(body, dict) or case.meta.generation.mode.is_negative:
        return st.just(case)  # a body meant to be wrong stays wrong
    real: dict[str, st.SearchStrategy[Any]] = {}
    if isinstance(body.get("models"), list):
        real["models"] = st.lists(st.sampled_from(MODELS), min_size=1, max_size=3)
    if isinstance(body.get("regions"), list):
        real["regions"] = st.lists(st.sampled_from(REGIONS), min_size=1, max_size=3)
    if isinstance(body.get("model"), str):
        real["model"] = st.sampled_from(MODELS)
    for name in ("region", "region_preference"):
        if isinstance(body.get(name), str):
            real[name] = st.sampled_from(REGIONS)
    if not real:
        return st.just(case)

    def named(names: dict[str, Any]) -> Any:
        case.body = body | names
        return case

    return st.one_of(st.just(case), st.fixed_dictionaries(real).map(named))


# Refusals the document cannot foresee: names are checked against the config (aliases, any
# case), and a job's size is the product of three list lengths.
BEYOND_THE_DOCUMENT = frozenset(
    {"UNKNOWN_MODEL", "UNKNOWN_REGION", "MODEL_NOT_SERVED", "TOO_MANY_EXECUTIONS"}
)


def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    """Keep every failure but a schema-valid body refused for what only the config decides."""
    # Under /v1 the same refusal is OpenAI's shape: a 400 (or 404 for a model), `error.code`.
    if isinstance(failure, RejectedPositiveData) and response.status_code in (400, 404, 413, 422):
        body = response.json()
        code = body.get("code") or (body.get("error") or {}).get("code")
        return code not in BEYOND_THE_DOCUMENT
    return True


for loaded in (full, random_only):
    loaded.hook(flatmap_case)
    loaded.hook(filter_failure)


@pytest.fixture(scope="module")
def router_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = fuzz_config(tmp_path_factory.mktemp("fuzz"))
    with serving(create_app(settings_from_mapping(config))) as url:
        yield url


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
    )


class Budget:
    """Each caller's time on each operation, counted from its first request: past it, the
    examples left are drawn but not sent, so a loaded machine shortens the run, not fails it."""

    def __init__(self) -> None:
        self._started: dict[tuple[str, str], float] = {}

    def allows(self, caller: str, case: Any) -> bool:
        now = time.monotonic()
        started = self._started.setdefault((caller, case.operation.label), now)
        return now - started < SECONDS_PER_OPERATION[caller]


@pytest.fixture(scope="module")
def budget() -> Budget:
    return Budget()


def call(case: Any, caller: str, router_url: str, session: requests.Session) -> None:
    key = KEYS.get(caller)
    headers = {"Authorization": f"Bearer {key}"} if key is not None else None
    case.call_and_validate(base_url=router_url, session=session, headers=headers)


@full.parametrize()
@fuzz(EXAMPLES["admin"])
def test_as_an_admin(case: Any, router_url: str, session: requests.Session, budget: Budget) -> None:
    if budget.allows("admin", case):
        call(case, "admin", router_url, session)


@random_only.parametrize()
@fuzz(EXAMPLES["user"])
def test_as_a_user(case: Any, router_url: str, session: requests.Session, budget: Budget) -> None:
    if budget.allows("user", case):
        call(case, "user", router_url, session)


@random_only.parametrize()
@fuzz(EXAMPLES["nobody"])
def test_without_a_key(
    case: Any, router_url: str, session: requests.Session, budget: Budget
) -> None:
    if budget.allows("nobody", case):
        call(case, "nobody", router_url, session)
