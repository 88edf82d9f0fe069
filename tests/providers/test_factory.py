"""build_provider: the right class, the token from the environment, clear config errors."""

from __future__ import annotations

import pytest

from hybrid_router.core.model import ProviderKind, ProviderSpec
from hybrid_router.errors import ConfigError
from hybrid_router.providers import build_provider
from hybrid_router.providers.modal import ModalProvider
from hybrid_router.providers.openai import OpenAIProvider
from hybrid_router.providers.simulated import SimulatedCloud, SimulatedProvider
from tests.providers.servers import SMALL, Kit, request


def spec(kind: ProviderKind, url: str = "", token_env: str | None = None) -> ProviderSpec:
    return ProviderSpec(
        name="p-us", kind=kind, region="US", models=(SMALL,), url=url, token_env=token_env
    )


async def test_modal_provider_uses_the_token_from_the_environment(kit: Kit) -> None:
    emulator = await kit.emulator(token="s3cret-token")
    provider = build_provider(
        spec(ProviderKind.MODAL, f"{emulator.url}/US", token_env="MODAL_API_TOKEN"),
        env={"MODAL_API_TOKEN": "s3cret-token"},
    )
    try:
        assert isinstance(provider, ModalProvider)
        assert (await provider.run(request())).response
    finally:
        await provider.aclose()


async def test_openai_provider_without_token() -> None:
    provider = build_provider(spec(ProviderKind.OPENAI, "http://127.0.0.1:1"), env={})
    await provider.aclose()
    assert isinstance(provider, OpenAIProvider)


@pytest.mark.parametrize("env", [{}, {"MODAL_API_TOKEN": ""}])
def test_missing_token_names_the_variable(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="MODAL_API_TOKEN"):
        build_provider(spec(ProviderKind.MODAL, "http://x", token_env="MODAL_API_TOKEN"), env=env)


def test_simulated_provider_needs_the_cloud() -> None:
    with pytest.raises(ConfigError, match="p-us"):
        build_provider(spec(ProviderKind.SIMULATED), env={})
    cloud = SimulatedCloud(1)
    provider = build_provider(spec(ProviderKind.SIMULATED), env={}, cloud=cloud)
    assert isinstance(provider, SimulatedProvider)
    assert provider.cloud is cloud
