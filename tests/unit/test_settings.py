"""The config file: the built-in default, canonical names, and errors that name the bad key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hybrid_router.core.model import ProviderKind
from hybrid_router.errors import ConfigError
from hybrid_router.settings import ServerSettings, Settings, load_settings

BASE = """
gpu_limit = 10

[store]
url = "sqlite:///router.db"

[regions.US]
gpu_limit = 3
aliases = ["us-east", "USA"]

[regions.EU]
gpu_limit = 3
aliases = ["eu-west"]

[regions.ASIA]
gpu_limit = 3
aliases = ["asia-pacific", "APAC"]

[models."llama3.2-1b"]
gpus = 1

[models."mistral-7b"]
gpus = 2

[providers.modal-us]
kind = "modal"
region = "us-east"
url = "https://example--beacon-us-inference.modal.run"
models = ["llama3.2-1b", "Mistral-7B"]
timeout_s = 600
scaledown_window_s = 120
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "router.toml"
    path.write_text(text, encoding="utf-8")
    return path


def config_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    return info.value.message


def test_default_config_has_three_regions_models_and_simulated_providers() -> None:
    settings = load_settings(None)
    assert settings.gpu_limit == 10
    assert list(settings.region_specs()) == ["US", "EU", "ASIA"]
    assert all(r.gpu_limit == 3 for r in settings.region_specs().values())
    assert set(settings.model_specs()) == {"llama3.2-1b", "mistral-7b", "qwen2.5-1.5b"}
    providers = settings.provider_specs()
    assert set(providers) == {"sim-us", "sim-eu", "sim-asia"}
    assert {p.region for p in providers.values()} == {"US", "EU", "ASIA"}
    for spec in providers.values():
        assert spec.kind is ProviderKind.SIMULATED
        assert set(spec.models) == set(settings.model_specs())
        assert spec.time_scale == pytest.approx(0.02)
        assert spec.timeout_s == pytest.approx(600 * 0.02)
        assert spec.scaledown_window_s == pytest.approx(120 * 0.02)
        assert spec.max_inputs == 1
    assert settings.store_url.startswith("sqlite:///")
    assert settings.store_url.endswith("hybrid-router.db")


def test_aliases_canonicalise_ignoring_case() -> None:
    settings = load_settings(None)
    for spelling, region in [
        ("US", "US"),
        ("us", "US"),
        ("US-EAST", "US"),
        ("North-America", "US"),
        ("eu-west", "EU"),
        ("Europe", "EU"),
        ("APAC", "ASIA"),
        ("asia-pacific", "ASIA"),
        ("Asia", "ASIA"),
    ]:
        assert settings.canonical_region(spelling) == region, spelling
    assert settings.canonical_region("mars") is None
    assert settings.canonical_model("Mistral-7B") == "mistral-7b"
    assert settings.canonical_model("gpt-4") is None


def test_alias_declared_upper_case_matches_lower_case(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, BASE))
    assert settings.canonical_region("usa") == "US"
    assert settings.canonical_region("apac") == "ASIA"


def test_provider_fields_come_out_canonical(tmp_path: Path) -> None:
    spec = load_settings(write(tmp_path, BASE)).provider_specs()["modal-us"]
    assert spec.region == "US"
    assert spec.models == ("llama3.2-1b", "mistral-7b")
    assert spec.kind is ProviderKind.MODAL


def test_relative_sqlite_path_is_relative_to_the_current_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(write(tmp_path, BASE))
    assert settings.store_url == "sqlite:///" + str(tmp_path / "router.db")


def test_top_level_options_have_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, BASE))
    assert settings.max_body_bytes == 1_048_576
    assert settings.shutdown_grace_s == 30
    assert settings.retry_base_s == 1.0
    assert settings.retry_max_s == 60.0
    # Every wait for a client is bounded, out of the box.
    http = settings.http
    assert (http.keep_alive_timeout_s, http.header_timeout_s, http.body_timeout_s) == (5, 10, 30)


def test_the_account_s_free_gpus_are_planned_unless_told_oldest_first(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, BASE)).topology().planned_share
    oldest = load_settings(write(tmp_path, 'share_free_gpus = "oldest"\n' + BASE))
    assert not oldest.topology().planned_share
    message = config_error(tmp_path, 'share_free_gpus = "fastest"\n' + BASE)
    assert "share_free_gpus" in message and "'planned' or 'oldest'" in message


def test_connection_timeouts_must_be_positive(tmp_path: Path) -> None:
    message = config_error(tmp_path, BASE + "\n[http]\nheader_timeout_s = 0\n")
    assert "http.header_timeout_s" in message


def test_provider_health_has_defaults_and_is_validated(tmp_path: Path) -> None:
    rules = load_settings(write(tmp_path, BASE)).provider_health.rules()
    assert (rules.failures, rules.window_s, rules.cooldown_s) == (3, 60.0, 30.0)
    custom = BASE.replace("[store]", "[provider_health]\nfailures = 1\ncooldown_s = 5\n\n[store]")
    rules = load_settings(write(tmp_path, custom)).provider_health.rules()
    assert (rules.failures, rules.window_s, rules.cooldown_s) == (1, 60.0, 5.0)
    message = config_error(tmp_path, custom.replace("failures = 1", "failures = 0"))
    assert "  provider_health.failures: " in message


def test_unknown_region_names_the_key_and_the_known_regions(tmp_path: Path) -> None:
    message = config_error(tmp_path, BASE.replace('region = "us-east"', 'region = "XX"'))
    assert "providers.modal-us.region: unknown region 'XX' (known: US, EU, ASIA)" in message


def test_unknown_model_in_a_provider(tmp_path: Path) -> None:
    message = config_error(tmp_path, BASE.replace('"Mistral-7B"', '"gpt-4"'))
    assert "providers.modal-us.models: unknown model 'gpt-4'" in message


def test_model_larger_than_its_region(tmp_path: Path) -> None:
    message = config_error(tmp_path, BASE.replace("gpus = 2", "gpus = 4"))
    assert "models.mistral-7b.gpus" in message
    assert "regions.US.gpu_limit" in message


def test_model_larger_than_the_global_limit(tmp_path: Path) -> None:
    message = config_error(tmp_path, BASE.replace("gpus = 2", "gpus = 11"))
    assert "models.mistral-7b.gpus" in message
    assert "global gpu_limit 10" in message


def test_region_and_model_without_a_provider_are_fine(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, BASE))
    assert "EU" in settings.region_specs()  # no provider serves EU


def test_duplicate_alias_across_regions(tmp_path: Path) -> None:
    message = config_error(tmp_path, BASE.replace('["eu-west"]', '["eu-west", "US-East"]'))
    assert "regions.EU.aliases: 'US-East' already names region US" in message


def test_missing_token_env_variable_is_named_never_valued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = BASE.replace("timeout_s = 600", 'token_env = "HR_TEST_TOKEN"\ntimeout_s = 600')
    monkeypatch.delenv("HR_TEST_TOKEN", raising=False)
    message = config_error(tmp_path, text)
    assert "providers.modal-us.token_env" in message
    assert "HR_TEST_TOKEN" in message

    monkeypatch.setenv("HR_TEST_TOKEN", "s3cret-value")
    settings = load_settings(write(tmp_path, text))
    assert settings.provider_specs()["modal-us"].token_env == "HR_TEST_TOKEN"
    assert "s3cret-value" not in repr(settings)


PROXY_AUTH = (
    'token_id_env = "HR_TEST_PROXY_ID"\ntoken_secret_env = "HR_TEST_PROXY_SECRET"\ntimeout_s = 600'
)


def test_proxy_auth_variables_reach_the_provider_spec_never_their_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HR_TEST_PROXY_ID", "wk-id-value")
    monkeypatch.setenv("HR_TEST_PROXY_SECRET", "ws-secret-value")

    settings = load_settings(write(tmp_path, BASE.replace("timeout_s = 600", PROXY_AUTH)))

    spec = settings.provider_specs()["modal-us"]
    assert spec.token_id_env == "HR_TEST_PROXY_ID"
    assert spec.token_secret_env == "HR_TEST_PROXY_SECRET"
    assert "wk-id-value" not in repr(settings) + repr(spec)
    assert "ws-secret-value" not in repr(settings) + repr(spec)


def test_unset_proxy_auth_variable_is_named_never_valued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HR_TEST_PROXY_ID", "wk-id-value")
    monkeypatch.delenv("HR_TEST_PROXY_SECRET", raising=False)

    message = config_error(tmp_path, BASE.replace("timeout_s = 600", PROXY_AUTH))

    assert (
        "providers.modal-us.token_secret_env: environment variable HR_TEST_PROXY_SECRET is not set"
        in message
    )
    assert "token_id_env" not in message
    assert "wk-id-value" not in message


@pytest.mark.parametrize("given", ["token_id_env", "token_secret_env"])
def test_proxy_auth_needs_both_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    monkeypatch.setenv("HR_TEST_PROXY", "value")
    text = BASE.replace("timeout_s = 600", f'{given} = "HR_TEST_PROXY"\ntimeout_s = 600')

    message = config_error(tmp_path, text)

    assert "providers.modal-us: give both token_id_env and token_secret_env, or neither" in message


def test_proxy_auth_is_for_modal_providers_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HR_TEST_PROXY_ID", "wk-id-value")
    monkeypatch.setenv("HR_TEST_PROXY_SECRET", "ws-secret-value")
    text = BASE.replace("timeout_s = 600", PROXY_AUTH).replace('kind = "modal"', 'kind = "openai"')

    message = config_error(tmp_path, text)

    assert "providers.modal-us.token_id_env: only for kind 'modal'" in message
    assert "providers.modal-us.token_secret_env: only for kind 'modal'" in message


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("gpu_limit = 10", "gpu_limit = 0", "gpu_limit"),
        ("[regions.EU]\ngpu_limit = 3", "[regions.EU]\ngpu_limit = -1", "regions.EU.gpu_limit"),
        ("gpus = 2", "gpus = 0", "models.mistral-7b.gpus"),
        ("gpus = 1", "gpus = 0", 'models."llama3.2-1b".gpus'),  # dotted names quoted, as in TOML
        ("timeout_s = 600", "timeout_s = 0", "providers.modal-us.timeout_s"),
        ("timeout_s = 600", "timeout_s = 600\nmax_inputs = 0", "providers.modal-us.max_inputs"),
        (
            'aliases = ["eu-west"]',
            'aliases = ["eu-west"]\nmax_running = 0',
            "regions.EU.max_running",
        ),
        ("timeout_s = 600", "timeout_s = inf", "providers.modal-us.timeout_s"),
    ],
)
def test_non_positive_limits(tmp_path: Path, old: str, new: str, key: str) -> None:
    assert old in BASE
    message = config_error(tmp_path, BASE.replace(old, new, 1))
    assert f"  {key}: " in message


def test_unknown_key_is_named(tmp_path: Path) -> None:
    message = config_error(
        tmp_path, BASE.replace("gpu_limit = 3\naliases", "gpu_limt = 3\naliases")
    )
    assert "regions.US.gpu_limt: unknown key" in message
    assert "regions.US.gpu_limit: required key is missing" in message


def test_unknown_top_level_key(tmp_path: Path) -> None:
    message = config_error(tmp_path, "gpu_limits = 3\n" + BASE)
    assert "gpu_limits: unknown key" in message


def test_wrong_type_is_not_coerced(tmp_path: Path) -> None:
    message = config_error(tmp_path, BASE.replace("gpu_limit = 10", 'gpu_limit = "10"'))
    assert "  gpu_limit: " in message


def test_simulated_only_options_on_another_kind(tmp_path: Path) -> None:
    message = config_error(tmp_path, BASE.replace("timeout_s = 600", "timeout_s = 600\nseed = 4"))
    assert "providers.modal-us.seed: only for kind 'simulated'" in message


def test_modal_provider_needs_a_url(tmp_path: Path) -> None:
    text = BASE.replace('url = "https://example--beacon-us-inference.modal.run"\n', "")
    message = config_error(tmp_path, text)
    assert "providers.modal-us.url" in message


def test_unsupported_store_url(tmp_path: Path) -> None:
    message = config_error(tmp_path, BASE.replace("sqlite:///router.db", "postgres://db/x"))
    assert "store.url: unsupported" in message


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    message = config_error(tmp_path, BASE + "\n[regions.US\n")
    assert "router.toml" in message
    assert "invalid TOML" in message


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path / "nope.toml")
    assert "nope.toml" in info.value.message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = BASE.replace('region = "us-east"', 'region = "XX"').replace('"Mistral-7B"', '"gpt-4"')
    message = config_error(tmp_path, text)
    assert "unknown region 'XX'" in message
    assert "unknown model 'gpt-4'" in message


def test_settings_are_frozen() -> None:
    settings = load_settings(None)
    with pytest.raises(ValueError):
        settings.gpu_limit = 5  # type: ignore[misc]
    assert isinstance(settings, Settings)


def test_server_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRID_ROUTER_PORT", "9123")
    monkeypatch.setenv("HYBRID_ROUTER_CONFIG", os.devnull)
    server = ServerSettings()
    assert server.port == 9123
    assert server.host == "127.0.0.1"
    assert server.config == Path(os.devnull)
