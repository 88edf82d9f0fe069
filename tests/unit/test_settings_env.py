"""The config from the environment: the whole TOML in one variable, single keys in others,
and a bad value reported naming its variable (what a platform's environment panel gives)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hybrid_router.errors import ConfigError
from hybrid_router.settings import (
    load_settings,
    settings_from_environment,
    unknown_environment_variables,
)

from .test_settings import BASE, write


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No HYBRID_ROUTER_* variable of the caller's shell leaks into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("HYBRID_ROUTER_"):
            monkeypatch.delenv(name)


def environment_error() -> str:
    with pytest.raises(ConfigError) as info:
        settings_from_environment()
    return info.value.message


def test_the_whole_config_from_one_variable_is_the_file_it_would_be(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYBRID_ROUTER_CONFIG_TOML", BASE)
    assert settings_from_environment() == load_settings(write(tmp_path, BASE))


def test_no_variable_means_the_built_in_config(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_from_environment() == load_settings(None)


def test_the_config_file_variable_still_works(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HYBRID_ROUTER_CONFIG", str(write(tmp_path, BASE)))
    assert settings_from_environment().regions["US"].aliases == ["us-east", "USA"]


def test_single_settings_override_the_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HYBRID_ROUTER_CONFIG_TOML", BASE)
    monkeypatch.setenv("HYBRID_ROUTER_GPU_LIMIT", "6")
    monkeypatch.setenv("HYBRID_ROUTER_SHUTDOWN_GRACE_S", "8.5")
    # What Railway's reference variables give: the platform's Redis url in a variable.
    monkeypatch.setenv("HYBRID_ROUTER_STORE__URL", "redis://10.0.0.5:6379/0?prefix=prod")
    monkeypatch.setenv("hybrid_router_store__lease_ttl_s", "3")  # any case
    settings = settings_from_environment()
    assert settings.gpu_limit == 6
    assert settings.shutdown_grace_s == 8.5
    assert settings.store.url == "redis://10.0.0.5:6379/0?prefix=prod"
    assert settings.store.lease_ttl_s == 3.0
    assert settings.store.retention_s == 7 * 86400  # untouched keys keep their values
    assert settings.regions["US"].gpu_limit == 3


def test_an_explicit_config_file_still_takes_single_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HYBRID_ROUTER_CONFIG_TOML", "not read: the file given wins")
    monkeypatch.setenv("HYBRID_ROUTER_GPU_LIMIT", "4")
    assert settings_from_environment(write(tmp_path, BASE)).gpu_limit == 4


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        (
            "HYBRID_ROUTER_GPU_LIMIT",
            "ten",
            "HYBRID_ROUTER_GPU_LIMIT: Input should be a valid integer",
        ),
        ("HYBRID_ROUTER_GPU_LIMIT", "0", "HYBRID_ROUTER_GPU_LIMIT: Input should be greater than 0"),
        ("HYBRID_ROUTER_STORE__LEASE_TTL_S", "600", "HYBRID_ROUTER_STORE__LEASE_TTL_S: Input"),
        ("HYBRID_ROUTER_STORE", "redis://x", "HYBRID_ROUTER_STORE: is a table"),
        ("HYBRID_ROUTER_PORT", "http", "HYBRID_ROUTER_PORT: Input should be a valid integer"),
        ("HYBRID_ROUTER_CONFIG_TOML", "gpu_limit = ", "HYBRID_ROUTER_CONFIG_TOML: invalid TOML"),
    ],
)
def test_a_bad_value_is_reported_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, problem: str
) -> None:
    monkeypatch.setenv(name, value)
    assert problem in environment_error()


def test_a_problem_found_later_names_the_variable_and_never_its_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HYBRID_ROUTER_STORE__URL", "mysql://admin:hunter2@db/router")
    message = environment_error()
    assert "store.url (from HYBRID_ROUTER_STORE__URL): unsupported scheme 'mysql'" in message
    assert "hunter2" not in message


def test_a_problem_in_the_toml_variable_names_it_and_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HYBRID_ROUTER_CONFIG_TOML", BASE.replace("gpu_limit = 10", "gpu_limit = 0"))
    message = environment_error()
    assert message.startswith("invalid config HYBRID_ROUTER_CONFIG_TOML:")
    assert "gpu_limit: Input should be greater than 0" in message


def test_an_empty_variable_is_one_not_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HYBRID_ROUTER_CONFIG", "HYBRID_ROUTER_CONFIG_TOML", "HYBRID_ROUTER_GPU_LIMIT"):
        monkeypatch.setenv(name, "")
    assert settings_from_environment() == load_settings(None)


def test_file_and_text_at_once_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRID_ROUTER_CONFIG", "/etc/router.toml")
    monkeypatch.setenv("HYBRID_ROUTER_CONFIG_TOML", BASE)
    assert "not both" in environment_error()


def test_typos_are_found_and_known_names_are_not() -> None:
    env = {
        "HYBRID_ROUTER_GPU_LIMT": "3",
        "HYBRID_ROUTER_GPU_LIMIT": "3",
        "HYBRID_ROUTER_STORE__URL": "redis://x",
        "HYBRID_ROUTER_URL": "http://router",
        "HYBRID_ROUTER_API_KEY": "k",
        "HYBRID_ROUTER_CONFIG_TOML": "",
        "HYBRID_ROUTER_TEST_REDIS_URL": "redis://x",
        "PATH": "/bin",
    }
    assert unknown_environment_variables(env) == ["HYBRID_ROUTER_GPU_LIMT"]
