"""build_provider: the right class, the token from the environment, clear config errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hybrid_router.core.model import ProviderKind, ProviderSpec
from hybrid_router.errors import ConfigError
from hybrid_router.providers import build_provider
from hybrid_router.providers.modal import ModalProvider, ProxyAuth
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


async def test_modal_provider_sends_proxy_auth_from_the_environment(kit: Kit) -> None:
    emulator = await kit.emulator(proxy_auth=ProxyAuth("wk-id", "ws-secret"))
    proxied = ProviderSpec(
        name="p-us",
        kind=ProviderKind.MODAL,
        region="US",
        models=(SMALL,),
        url=f"{emulator.url}/US",
        token_id_env="HR_PROXY_ID",
        token_secret_env="HR_PROXY_SECRET",
    )
    provider = build_provider(proxied, env={"HR_PROXY_ID": "wk-id", "HR_PROXY_SECRET": "ws-secret"})
    try:
        assert (await provider.run(request())).response
    finally:
        await provider.aclose()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"HR_PROXY_ID": "wk-id"}, "HR_PROXY_SECRET"),
        ({"HR_PROXY_SECRET": "ws-secret"}, "HR_PROXY_ID"),
        ({"HR_PROXY_ID": "", "HR_PROXY_SECRET": "ws-secret"}, "HR_PROXY_ID"),
    ],
)
def test_missing_proxy_auth_variable_is_named_never_valued(env: dict[str, str], named: str) -> None:
    proxied = ProviderSpec(
        name="p-us",
        kind=ProviderKind.MODAL,
        region="US",
        models=(SMALL,),
        url="http://x",
        token_id_env="HR_PROXY_ID",
        token_secret_env="HR_PROXY_SECRET",
    )
    with pytest.raises(ConfigError, match=named) as failed:
        build_provider(proxied, env=env)
    assert "ws-secret" not in failed.value.message
    assert "wk-id" not in failed.value.message


def test_a_router_with_simulated_providers_only_loads_no_http_client() -> None:
    # A restart with a long queue waits for every import: the HTTP providers' client
    # library is loaded only when one of them is configured.
    code = (
        "import sys\n"
        "from hybrid_router.api import create_app\n"
        "from hybrid_router.runtime import build_service\n"
        "from hybrid_router.settings import settings_from_environment\n"
        "build_service(settings_from_environment())\n"
        "assert 'aiohttp' not in sys.modules, 'aiohttp imported'\n"
    )
    # The built-in config, whose providers are simulated.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRID_ROUTER_")}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
