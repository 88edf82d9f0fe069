"""Provider health with cooldowns: pure decisions, time passed in as `now`.

A provider that fails `failures` times within `window_s` (refused connections, timeouts,
5xx: see `counts_against`) cools down for `cooldown_s`: while it cools, the policy routes its
region's work to another provider serving the model, if there is one (policy.decide's
`cooling`). After the cooldown it is tried again on probation: one more failure cools it
down again at once, a success makes it healthy. A success always resets it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hybrid_router.core.model import (
    Completion,
    Failure,
    FailureKind,
    HealthState,
    ProviderStatus,
)


@dataclass(frozen=True)
class HealthRules:
    failures: int = 3
    window_s: float = 60.0
    cooldown_s: float = 30.0


@dataclass(frozen=True)
class ProviderHealth:
    """One provider's recent failures and cooldown."""

    failures: tuple[float, ...] = ()  # instants of the failures inside the window
    cooling_until: float | None = None
    on_probation: bool = False

    def state(self, now: float) -> HealthState:
        if self.cooling_until is not None and self.cooling_until > now:
            return HealthState.COOLING
        return HealthState.PROBATION if self.on_probation else HealthState.HEALTHY

    def failed(self, now: float, rules: HealthRules) -> ProviderHealth:
        """After a call that counts against the provider ended at `now`."""
        state = self.state(now)
        if state is HealthState.COOLING:
            return self  # calls sent before it cooled down: they tell nothing new
        if state is HealthState.PROBATION:
            return ProviderHealth(cooling_until=now + rules.cooldown_s, on_probation=True)
        recent = (*(t for t in self.failures if t > now - rules.window_s), now)
        if len(recent) >= rules.failures:
            return ProviderHealth(cooling_until=now + rules.cooldown_s, on_probation=True)
        return ProviderHealth(failures=recent)

    def succeeded(self) -> ProviderHealth:
        return ProviderHealth()


def counts_against(outcome: Completion | Failure | None) -> bool | None:
    """Whether a call's outcome counts against its provider's health: True for a failure
    of the provider (unreachable, timed out, 5xx, garbage), False for a success, None for
    what tells nothing about it (a cancelled call, a capacity answer, a rejected request)."""
    if isinstance(outcome, Completion):
        return False
    if isinstance(outcome, Failure) and outcome.kind in (
        FailureKind.UNAVAILABLE,
        FailureKind.TRANSIENT,
    ):
        return True
    return None


@dataclass
class HealthBoard:
    """Every provider's health as the scheduler has seen it (kept across leader terms)."""

    rules: HealthRules = field(default_factory=HealthRules)
    providers: dict[str, ProviderHealth] = field(default_factory=dict)

    def record(self, provider: str, outcome: Completion | Failure | None, now: float) -> None:
        against = counts_against(outcome)
        if against is None:
            return
        health = self.providers.get(provider, ProviderHealth())
        self.providers[provider] = health.failed(now, self.rules) if against else health.succeeded()

    def get(self, provider: str) -> ProviderHealth:
        return self.providers.get(provider, ProviderHealth())

    def status(self, provider: str, now: float) -> ProviderStatus:
        health = self.get(provider)
        state = health.state(now)
        return ProviderStatus(
            provider,
            state,
            cooling_until=health.cooling_until if state is HealthState.COOLING else None,
            recent_failures=sum(1 for t in health.failures if t > now - self.rules.window_s),
        )

    def cooling(self, now: float) -> dict[str, float]:
        """The providers cooling down at `now`, each with the instant its cooldown ends."""
        return {
            name: health.cooling_until
            for name, health in self.providers.items()
            if health.cooling_until is not None and health.cooling_until > now
        }
