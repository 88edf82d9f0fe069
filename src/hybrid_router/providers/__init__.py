"""Providers: one protocol, `run(request) -> Completion`, failures as ProviderFailure."""

from __future__ import annotations

from collections.abc import Mapping

from hybrid_router.core.model import ProviderKind, ProviderSpec
from hybrid_router.errors import ConfigError
from hybrid_router.providers.base import Provider
from hybrid_router.providers.simulated import SimulatedCloud, SimulatedProvider


def build_provider(
    spec: ProviderSpec, *, env: Mapping[str, str], cloud: SimulatedCloud | None = None
) -> Provider:
    """The provider `spec` describes; its credentials come from the variables it names."""
    if spec.kind is ProviderKind.SIMULATED:
        if cloud is None:
            raise ConfigError(f"provider {spec.name!r} is simulated but no simulated cloud exists")
        return SimulatedProvider(spec, cloud)
    # The HTTP providers are imported only when configured: their client library (aiohttp)
    # is a tenth of a second of every start, which a restart with a long queue waits for.
    from hybrid_router.providers.modal import ModalProvider, ProxyAuth
    from hybrid_router.providers.openai import OpenAIProvider

    token = _from_env(spec, spec.token_env, env)
    if spec.kind is ProviderKind.MODAL:
        token_id = _from_env(spec, spec.token_id_env, env)
        token_secret = _from_env(spec, spec.token_secret_env, env)
        proxy_auth = None
        if token_id is not None and token_secret is not None:
            proxy_auth = ProxyAuth(token_id, token_secret)
        elif token_id is not None or token_secret is not None:
            raise ConfigError(
                f"provider {spec.name!r}: Modal proxy auth needs both token_id_env and "
                "token_secret_env"
            )
        return ModalProvider(spec, token, proxy_auth=proxy_auth)
    return OpenAIProvider(spec, token)


def _from_env(spec: ProviderSpec, variable: str | None, env: Mapping[str, str]) -> str | None:
    """The value of `variable`, None when no variable is configured; named if unset."""
    if not variable:
        return None
    value = env.get(variable)
    if not value:
        raise ConfigError(f"provider {spec.name!r}: environment variable {variable} is not set")
    return value
