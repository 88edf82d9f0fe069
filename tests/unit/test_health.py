"""Provider health: failures within a window cool a provider down; the policy skips it for a
sibling while it cools, and uses it again after."""

from __future__ import annotations

from hybrid_router.core.health import HealthBoard, HealthRules, HealthState, ProviderHealth
from hybrid_router.core.model import (
    Completion,
    Container,
    Execution,
    Failure,
    FailureKind,
    ModelSpec,
    ProviderKind,
    ProviderSpec,
    Region,
)
from hybrid_router.core.policy import Topology, decide

RULES = HealthRules(failures=3, window_s=10.0, cooldown_s=30.0)
REFUSED = Failure("PROVIDER_UNAVAILABLE", "cannot connect", FailureKind.UNAVAILABLE)


def test_failures_within_the_window_cool_a_provider_down_until_the_cooldown_ends() -> None:
    health = ProviderHealth().failed(0.0, RULES).failed(4.0, RULES)
    assert health.state(4.0) is HealthState.HEALTHY
    health = health.failed(9.0, RULES)
    assert health.state(9.0) is HealthState.COOLING
    assert health.cooling_until == 39.0
    assert health.state(38.9) is HealthState.COOLING
    assert health.state(39.0) is HealthState.PROBATION


def test_failures_spread_wider_than_the_window_never_cool_it_down() -> None:
    health = ProviderHealth()
    for t in (0.0, 6.0, 12.0, 18.0, 24.0):
        health = health.failed(t, RULES)
        assert health.state(t) is HealthState.HEALTHY
    assert health.failures == (18.0, 24.0)


def test_on_probation_one_failure_cools_it_down_again_and_a_success_makes_it_healthy() -> None:
    cooled = ProviderHealth().failed(0, RULES).failed(1, RULES).failed(2, RULES)
    assert cooled.failed(40.0, RULES).state(40.0) is HealthState.COOLING
    assert cooled.failed(40.0, RULES).cooling_until == 70.0
    assert cooled.succeeded().state(40.0) is HealthState.HEALTHY


def test_a_failure_while_cooling_does_not_extend_the_cooldown() -> None:
    cooled = ProviderHealth().failed(0, RULES).failed(1, RULES).failed(2, RULES)
    assert cooled.failed(10.0, RULES).cooling_until == 32.0


def test_a_success_resets_the_count() -> None:
    health = ProviderHealth().failed(0, RULES).failed(1, RULES).succeeded().failed(2, RULES)
    assert health.state(2) is HealthState.HEALTHY
    assert health.failures == (2,)


def test_only_provider_faults_count_against_it() -> None:
    board = HealthBoard(RULES)
    capacity = Failure("PROVIDER_CAPACITY", "busy", FailureKind.CAPACITY)
    bad_request = Failure("PROVIDER_BAD_REQUEST", "no", FailureKind.PERMANENT)
    server_error = Failure("PROVIDER_ERROR", "HTTP 502", FailureKind.TRANSIENT)
    for t, outcome in enumerate([capacity, bad_request, None, capacity, bad_request, None]):
        board.record("p", outcome, float(t))
    assert board.cooling(10.0) == {}
    for t in (10.0, 11.0):
        board.record("p", REFUSED, t)
    board.record("p", server_error, 12.0)
    assert board.cooling(12.0) == {"p": 42.0}
    assert board.cooling(42.0) == {}
    board.record("p", Completion("ok"), 43.0)
    assert board.get("p") == ProviderHealth()


# ------------------------------------------------------------------------- the policy

MODELS = ("a",)


def two_providers(max_containers: int | None = None) -> Topology:
    providers = {
        name: ProviderSpec(
            name, ProviderKind.SIMULATED, "US", MODELS, max_containers=max_containers
        )
        for name in ("first", "second")
    }
    return Topology(10, {"US": Region("US", 3)}, {m: ModelSpec(m) for m in MODELS}, providers)


def queued(n: int) -> list[Execution]:
    return [Execution(f"e{i}", "j", "US", "a", i, "?", seq=i) for i in range(n)]


def providers_used(cooling: dict[str, float], now: float = 100.0) -> list[str | None]:
    decision = decide(queued(2), [], two_providers(), now, cooling=cooling)
    return [a.execution.provider for a in decision.admissions]


def test_the_policy_routes_around_a_provider_cooling_down_and_back_after() -> None:
    assert providers_used({}) == ["first", "first"]
    assert providers_used({"first": 130.0}) == ["second", "second"]
    assert providers_used({"first": 130.0}, now=130.0) == ["first", "first"]


def test_with_every_provider_cooling_down_they_are_used_as_if_healthy() -> None:
    # The execution's own backoff paces the tries; nothing is failed (promise 5).
    assert providers_used({"first": 130.0, "second": 120.0}) == ["first", "first"]


def test_a_cooling_providers_warm_container_is_not_reused_and_its_end_is_a_wake_up() -> None:
    warm = Container("w", "first", "a", "US", 1, warm_until=150.0)
    decision = decide(queued(1), [warm], two_providers(), 100.0, cooling={"first": 130.0})
    assert [a.container.provider for a in decision.admissions] == ["second"]
    assert decision.admissions[0].opened
    # The sibling full, the execution waits; the cooldown's end is a moment to decide again.
    full = Container("s", "second", "a", "US", 1, in_flight=("other",))
    waiting = decide(
        queued(1), [full], two_providers(max_containers=1), 100.0, cooling={"first": 130.0}
    )
    assert waiting.admissions == ()
    assert waiting.wake_at == 130.0
