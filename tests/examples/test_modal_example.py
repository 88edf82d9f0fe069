"""examples/modal: its request handling, its Modal definitions, and its README's promises.

The handling is called directly; the endpoint function is served over real HTTP the way
Modal wraps it (its `magic_fastapi_app`) and called by the router's own Modal provider,
with only the GPU call (Modal's cloud, which cannot run here) replaced. The app module is
imported with `modal` installed, recording what each `app.function(...)` was given, and
compared with the README's table and with the README's router config, which the router's
own validation loads.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from hybrid_router.core.model import FailureKind, ProviderKind
from hybrid_router.providers.base import InferenceRequest, ProviderFailure
from hybrid_router.providers.modal import ModalProvider
from hybrid_router.settings import Settings, settings_from_mapping
from tests.providers.servers import Kit
from tests.unavailable import unavailable

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "modal"
README = (EXAMPLE / "README.md").read_text("utf-8")
MODELS = ("llama3.2-1b", "mistral-7b", "qwen2.5-1.5b")
REGIONS = ("US", "EU", "ASIA")


def _load(name: str, path: Path) -> ModuleType:
    """Import a file of the example as the module `name` (registered, as imports are)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def protocol() -> ModuleType:
    # The name app.py imports it by, as Modal's container (and `modal deploy`) would find it.
    return sys.modules.get("router_protocol") or _load(
        "router_protocol", EXAMPLE / "router_protocol.py"
    )


@pytest.fixture(scope="module")
def modal_app(protocol: ModuleType) -> Iterator[tuple[ModuleType, dict[tuple[str, str], Any]]]:
    """The app module, and what each `App.function` call was given, by (app, function)."""
    if importlib.util.find_spec("modal") is None:
        unavailable("modal is not installed (pip install -e '.[examples]')")
    import modal

    calls: dict[tuple[str, str], Any] = {}
    original = modal.App.function

    def recording(self: modal.App, **options: Any) -> Any:
        calls[(self.name or "", options["name"])] = options
        return original(self, **options)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(modal.App, "function", recording)
        module = _load("hybrid_router_modal_example", EXAMPLE / "app.py")
    yield module, calls


def readme_config() -> dict[str, Any]:
    """The router config the README tells a user to write (the TOML block with providers)."""
    blocks = re.findall(r"```toml\n(.*?)```", README, flags=re.DOTALL)
    [config] = [b for b in blocks if "[providers.modal-us]" in b]
    return tomllib.loads(re.sub(r"^ {3}", "", config, flags=re.MULTILINE))


@pytest.fixture
def readme_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("MODAL_PROXY_TOKEN_ID", "wk-test")
    monkeypatch.setenv("MODAL_PROXY_TOKEN_SECRET", "ws-test")
    return settings_from_mapping(readme_config(), source="examples/modal/README.md")


def body(**changes: object) -> dict[str, object]:
    call: dict[str, object] = {
        "model": "mistral-7b",
        "prompt": "Is the sky blue?",
        "temperature": 0.7,
        "max_tokens": 64,
        "region": "US",
    }
    return {**call, **changes}


# ---------------------------------------------------------------------------- the handling


async def test_a_call_is_answered_in_the_routers_shape(protocol: ModuleType) -> None:
    seen = []

    async def generate(call: Any) -> Any:
        seen.append(call)
        return protocol.Generation(f"answer to {call.prompt}", 5, 1.25, prompt_tokens=12)

    status, reply = await protocol.handle(body(), region="US", models=MODELS, generate=generate)

    assert status == 200
    assert reply == {
        "success": True,
        "response": "answer to Is the sky blue?",
        "inference_time": 1.25,
        "tokens_generated": 5,
        "prompt_tokens": 12,
        "model": "mistral-7b",
        "region": "US",
    }
    assert seen == [protocol.Call("mistral-7b", "Is the sky blue?", 0.7, 64)]


async def test_sampling_defaults_when_left_out(protocol: ModuleType) -> None:
    call = protocol.parse({"model": "qwen2.5-1.5b", "prompt": "Hi"}, region="EU", models=MODELS)

    assert (call.temperature, call.max_tokens) == (0.7, 256)


@pytest.mark.parametrize(
    ("sent", "says"),
    [
        ([1, 2], "JSON object"),
        (body(model="gpt-5"), "unknown model 'gpt-5'"),
        (body(model=None), "unknown model None"),
        (body(prompt=""), "'prompt'"),
        (body(prompt=7), "'prompt'"),
        (body(temperature="hot"), "'temperature'"),
        (body(temperature=True), "'temperature'"),
        (body(temperature=2.5), "'temperature'"),
        (body(max_tokens=0), "'max_tokens' must be from 1"),
        (body(max_tokens=1.5), "'max_tokens' must be an integer"),
        (body(region="EU"), "region 'EU' asked of the US deployment"),
    ],
)
async def test_a_bad_call_is_a_400_naming_the_problem(
    protocol: ModuleType, sent: object, says: str
) -> None:
    async def generate(call: Any) -> Any:
        raise AssertionError("a bad call must not reach a GPU")

    status, reply = await protocol.handle(sent, region="US", models=MODELS, generate=generate)

    assert status == 400
    assert reply["success"] is False
    assert says in reply["error"]


async def test_a_failed_generation_is_a_500(protocol: ModuleType) -> None:
    async def generate(call: Any) -> Any:
        raise RuntimeError("CUDA out of memory")

    status, reply = await protocol.handle(body(), region="US", models=MODELS, generate=generate)

    assert status == 500
    assert reply == {
        "success": False,
        "error": "mistral-7b failed in US: RuntimeError: CUDA out of memory",
    }


# ---------------------------------------------------------------------------- over HTTP


class _OnGpu:
    """Stands in for one deployed GPU function: `.remote.aio(...)`, as Modal's handle has."""

    def __init__(self, model: str, fail: bool) -> None:
        self.remote = self
        self.model = model
        self.fail = fail

    async def aio(self, prompt: str, temperature: float, max_tokens: int) -> dict[str, object]:
        if self.fail:
            raise TimeoutError("input timed out")
        return {
            "text": f"{self.model}: {prompt}",
            "tokens_generated": 3,
            "prompt_tokens": 9,
            "inference_time": 0.5,
        }


async def _provider_for_endpoint(
    kit: Kit, example: ModuleType, monkeypatch: pytest.MonkeyPatch, *, fail: bool = False
) -> ModalProvider:
    from modal._runtime.asgi import magic_fastapi_app  # what Modal serves a fastapi_endpoint as

    monkeypatch.setenv("HYBRID_ROUTER_REGION", "US")
    monkeypatch.setitem(example.GENERATORS, "US", {m: _OnGpu(m, fail) for m in MODELS})
    return kit.modal(await kit.serve(magic_fastapi_app(example.inference, "POST", False)))


def _request(model: str = "mistral-7b", region: str = "US") -> InferenceRequest:
    return InferenceRequest("job:0:m:US", model, "Is the sky blue?", region, 0.2, 32)


async def test_the_router_runs_a_call_on_the_endpoint(
    kit: Kit, modal_app: tuple[ModuleType, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = await _provider_for_endpoint(kit, modal_app[0], monkeypatch)

    completion = await provider.run(_request())

    assert completion.response == "mistral-7b: Is the sky blue?"
    assert completion.inference_time == 0.5
    assert completion.tokens_generated == 3
    assert completion.prompt_tokens == 9
    assert completion.metadata == {"model": "mistral-7b", "region": "US"}


@pytest.mark.parametrize(
    ("request_", "code", "kind"),
    [
        (_request(model="gpt-5"), "PROVIDER_BAD_REQUEST", FailureKind.PERMANENT),
        (_request(region="EU"), "PROVIDER_BAD_REQUEST", FailureKind.PERMANENT),
    ],
    ids=["unknown-model", "wrong-region"],
)
async def test_the_router_fails_what_the_endpoint_refuses(
    kit: Kit,
    modal_app: tuple[ModuleType, Any],
    monkeypatch: pytest.MonkeyPatch,
    request_: InferenceRequest,
    code: str,
    kind: FailureKind,
) -> None:
    provider = await _provider_for_endpoint(kit, modal_app[0], monkeypatch)

    with pytest.raises(ProviderFailure) as failed:
        await provider.run(request_)

    assert (failed.value.failure.code, failed.value.failure.kind) == (code, kind)


async def test_the_router_retries_a_failed_generation(
    kit: Kit, modal_app: tuple[ModuleType, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = await _provider_for_endpoint(kit, modal_app[0], monkeypatch, fail=True)

    with pytest.raises(ProviderFailure) as failed:
        await provider.run(_request())

    assert failed.value.failure.kind is FailureKind.TRANSIENT
    assert "input timed out" in failed.value.failure.message


# ---------------------------------------------------------------------------- Modal definitions


def test_one_app_per_region_with_an_endpoint_behind_proxy_auth(
    modal_app: tuple[ModuleType, Any],
) -> None:
    example, _ = modal_app
    apps = {r: getattr(example, f"app_{r.lower()}") for r in REGIONS}

    for region, app in apps.items():
        assert f"modal deploy examples/modal/app.py::app_{region.lower()}" in README
        assert app.name == f"hybrid-router-{region.lower()}"
        info = example.ENDPOINTS[region].info()
        assert info.web_info is not None
        assert info.web_info.method == "POST"
        assert info.web_info.unauthenticated is False  # requires_proxy_auth=True
        assert info.gpus == []  # the endpoint holds no GPU
        assert info.regions == [example.REGIONS[region]]
        assert example.endpoint_url("w", region) == f"https://w--{app.name}-inference.modal.run"


def test_a_gpu_function_per_model_in_each_region(modal_app: tuple[ModuleType, Any]) -> None:
    example, calls = modal_app
    expected_gpu = {"llama3.2-1b": "T4", "mistral-7b": "A10G", "qwen2.5-1.5b": "T4"}

    for region in REGIONS:
        assert set(example.GENERATORS[region]) == set(MODELS)
        for model, function in example.GENERATORS[region].items():
            info = function.info()
            assert info.gpus == [(expected_gpu[model], 1)]
            assert info.regions == [example.REGIONS[region]]
            assert info.web_info is None  # reachable only through the endpoint
            assert info.concurrency_info.max_inputs == example.MAX_INPUTS
            options = calls[(f"hybrid-router-{region.lower()}", example.function_name(model))]
            assert f"`{example.function_name(model)}`" in README
            assert options["scaledown_window"] == example.SCALEDOWN_WINDOW_S == 120
            assert options["max_containers"] == example.MAX_CONTAINERS == 1
            assert (options["startup_timeout"], options["timeout"]) == (300, 300)
            for unset in ("min_containers", "buffer_containers", "retries"):
                assert options.get(unset) is None, unset


def test_the_endpoint_outlives_the_gpu_call_it_waits_for(modal_app: tuple[ModuleType, Any]) -> None:
    example, calls = modal_app

    for region in REGIONS:
        endpoint = calls[(f"hybrid-router-{region.lower()}", "inference")]
        gpu = calls[(f"hybrid-router-{region.lower()}", example.function_name("mistral-7b"))]
        assert endpoint["timeout"] >= gpu["startup_timeout"] + gpu["timeout"]


# ---------------------------------------------------------------------------- the README's config


def test_readme_config_is_valid_for_the_router(readme_settings: Settings) -> None:
    providers = readme_settings.provider_specs()

    assert set(providers) == {"modal-us", "modal-eu", "modal-asia"}
    for spec in providers.values():
        assert spec.kind is ProviderKind.MODAL
        assert (spec.token_id_env, spec.token_secret_env) == (
            "MODAL_PROXY_TOKEN_ID",
            "MODAL_PROXY_TOKEN_SECRET",
        )


def test_readme_config_agrees_with_the_app(
    readme_settings: Settings, modal_app: tuple[ModuleType, Any]
) -> None:
    example, calls = modal_app
    providers = readme_settings.provider_specs()
    gpus = {m: spec.gpus for m, spec in readme_settings.model_specs().items()}
    account = 0

    assert set(readme_settings.regions) == set(example.REGIONS)
    assert set(readme_settings.models) == set(example.MODELS)
    for spec in providers.values():
        app = f"hybrid-router-{spec.region.lower()}"
        assert spec.url == example.endpoint_url("YOUR-WORKSPACE", spec.region)
        assert set(spec.models) == set(example.MODELS)
        region_gpus = 0
        for model in spec.models:
            options = calls[(app, example.function_name(model))]
            [(_, count)] = example.GENERATORS[spec.region][model].info().gpus
            assert gpus[model] == count
            assert spec.scaledown_window_s >= options["scaledown_window"]
            assert spec.max_containers == options["max_containers"]
            assert spec.max_inputs <= example.MAX_INPUTS
            assert options["startup_timeout"] + options["timeout"] <= spec.timeout_s
            region_gpus += options["max_containers"] * count
        assert region_gpus <= readme_settings.regions[spec.region].gpu_limit
        account += region_gpus
    assert account <= readme_settings.gpu_limit
