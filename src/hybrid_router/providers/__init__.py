"""Providers: one protocol, `run(request) -> Completion`, failures as ProviderFailure."""

from __future__ import annotations

from collections.abc import Mapping

from hybrid_router.core.model import ProviderKind, ProviderSpec
from hybrid_router.errors import ConfigError
from hybrid_router.providers.base import Provider
from hybrid_router.providers.modal import ModalProvider
from hybrid_router.providers.openai import OpenAIProvider
from hybrid_router.providers.simulated import SimulatedCloud, SimulatedProvider


def build_provider(
    spec: ProviderSpec, *, env: Mapping[str, str], cloud: SimulatedCloud | None = None
) -> Provider:
    """The provider `spec` describes; its token comes from `env[spec.token_env]`."""
    if spec.kind is ProviderKind.SIMULATED:
        if cloud is None:
            raise ConfigError(f"provider {spec.name!r} is simulated but no simulated cloud exists")
        return SimulatedProvider(spec, cloud)
    token = None
    if spec.token_env:
        token = env.get(spec.token_env)
        if not token:
            raise ConfigError(
                f"provider {spec.name!r}: environment variable {spec.token_env} is not set"
            )
    if spec.kind is ProviderKind.MODAL:
        return ModalProvider(spec, token)
    return OpenAIProvider(spec, token)
