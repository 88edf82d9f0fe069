"""The TOML config file (validated at start) and the server's environment options."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from limits import RateLimitItem, parse_many
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from hybrid_router.core.health import HealthRules
from hybrid_router.core.model import (
    DEFAULT_MAX_RESPONSE_BYTES,
    ModelSpec,
    ProviderKind,
    ProviderSpec,
    Region,
)
from hybrid_router.core.policy import Topology
from hybrid_router.errors import ConfigError
from hybrid_router.store.redis_connect import SCHEMES as REDIS_SCHEMES
from hybrid_router.store.redis_connect import check_url as check_redis_url

DEFAULT_CONFIG = "default_config.toml"
ENV_PREFIX = "HYBRID_ROUTER_"

# strict: TOML is typed, so `gpu_limit = "3"` or `gpu_limit = true` is a mistake worth reporting
# rather than coercing. extra="forbid": a typo'd key is an error naming it, not silently ignored.
_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class StoreConfig(BaseModel):
    """`[store]`: where jobs, executions and the container ledger persist."""

    model_config = _STRICT

    # Validated even when left out, so the default's relative path is resolved too.
    url: str = Field(default="sqlite:///hybrid-router.db", validate_default=True)
    # Redis only: how long finished jobs are kept, and the leader lease's time to live.
    retention_s: float = Field(default=7 * 86400, gt=0, allow_inf_nan=False)
    lease_ttl_s: float = Field(default=5.0, ge=1, le=60, allow_inf_nan=False)

    @field_validator("url")
    @classmethod
    def _resolve_sqlite_path(cls, url: str) -> str:
        # Resolved once, at load: a relative path means the current dir of the process that
        # read the config, and a later chdir must not move the database.
        return _absolute_store_url(url)


class HttpConfig(BaseModel):
    """`[http]`: how long a client may hold a connection, before any key is checked.

    A connection that sends nothing, or a request that arrives a byte at a time, would
    otherwise keep a socket and its memory for as long as the client likes.
    """

    model_config = _STRICT

    # Idle: no request in progress, from the connection's start or the last response.
    keep_alive_timeout_s: float = Field(default=5.0, gt=0, allow_inf_nan=False)
    # From a request's first byte to the end of its head (request line and headers).
    header_timeout_s: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    # From the end of the head to the end of the body: answered 408 REQUEST_TIMEOUT.
    body_timeout_s: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    # A line per request (uvicorn's access log), as gunicorn, off unless asked for: with
    # clients polling status it is most of the log, and a tenth of a small request's time.
    access_log: bool = False
    # FastAPI's own OpenTelemetry spans and metrics per request, for a process with an
    # OpenTelemetry SDK configured; off unless asked for: looking for one reads the
    # environment on every request.
    opentelemetry: bool = False


class RegionConfig(BaseModel):
    """`[regions.NAME]`."""

    model_config = _STRICT

    gpu_limit: int = Field(gt=0)
    aliases: list[str] = Field(default_factory=list)
    max_running: int | None = Field(default=None, gt=0)


class ModelConfig(BaseModel):
    """`[models."NAME"]`."""

    model_config = _STRICT

    gpus: int = Field(default=1, gt=0)


class ProviderConfig(BaseModel):
    """`[providers.NAME]`."""

    model_config = _STRICT

    kind: Literal["modal", "openai", "simulated"]
    region: str
    models: list[str] = Field(min_length=1)
    url: str = ""
    token_env: str | None = None
    # kind "modal" only: Modal proxy auth, sent as Modal-Key / Modal-Secret.
    token_id_env: str | None = None
    token_secret_env: str | None = None
    timeout_s: float = Field(default=600.0, gt=0, allow_inf_nan=False)
    scaledown_window_s: float = Field(default=120.0, ge=0, allow_inf_nan=False)
    max_inputs: int = Field(default=1, gt=0)
    max_containers: int | None = Field(default=None, gt=0)
    max_response_bytes: int = Field(default=DEFAULT_MAX_RESPONSE_BYTES, gt=0)
    # Only meaningful for kind "simulated"; None so that setting them elsewhere can be reported.
    time_scale: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    seed: int | None = None


class ProviderHealthConfig(BaseModel):
    """`[provider_health]`: when a failing provider is skipped for a sibling (core.health)."""

    model_config = _STRICT

    failures: int = Field(default=3, gt=0)
    window_s: float = Field(default=60.0, gt=0, allow_inf_nan=False)
    cooldown_s: float = Field(default=30.0, gt=0, allow_inf_nan=False)

    def rules(self) -> HealthRules:
        return HealthRules(self.failures, self.window_s, self.cooldown_s)


class UserConfig(BaseModel):
    """`[users.NAME]`: one API key, its role and its limits."""

    model_config = _STRICT

    # The key itself never goes in the file: the variable holding it, or its SHA-256.
    api_key_env: str | None = None
    api_key_sha256: str | None = None
    role: Literal["user", "admin"] = "user"
    rate_limit: str | None = None
    max_queued: int | None = Field(default=None, gt=0)
    max_priority: int | None = None

    @field_validator("api_key_sha256")
    @classmethod
    def _hex_digest(cls, digest: str | None) -> str | None:
        if digest is None:
            return None
        folded = digest.strip().lower()
        if not _SHA256_HEX.match(folded):
            raise ValueError("must be a SHA-256 hex digest (64 hex characters)")
        return folded

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit(cls, text: str | None) -> str | None:
        if text is not None:
            rate_limit_item(text)
        return text

    @model_validator(mode="after")
    def _one_key_source(self) -> UserConfig:
        if (self.api_key_env is None) == (self.api_key_sha256 is None):
            raise ValueError("give exactly one of 'api_key_env' or 'api_key_sha256'")
        return self

    def rate_limit_item(self) -> RateLimitItem | None:
        """The parsed `rate_limit`, or None when the user has none."""
        return None if self.rate_limit is None else rate_limit_item(self.rate_limit)


def rate_limit_item(text: str) -> RateLimitItem:
    """One `limits` rate such as "60/minute"; ValueError naming the problem otherwise."""
    try:
        items = list(parse_many(text))
    except ValueError:
        raise ValueError(
            f"'{text}' is not a rate limit; write N/UNIT such as '60/minute' or '1000/day'"
        ) from None
    # One rate only: `limits` would check several non-atomically (the first one hit is spent
    # even when the second refuses), and `parse` would silently drop all but the first.
    if len(items) != 1:
        raise ValueError(f"'{text}': give one rate limit such as '60/minute', not several")
    if items[0].amount < 1:
        raise ValueError(f"'{text}': the amount must be at least 1")
    return items[0]


class Settings(BaseModel):
    """The whole config file; cross-references are checked when it is built."""

    model_config = _STRICT

    gpu_limit: int = Field(gt=0)
    store: StoreConfig = Field(default_factory=StoreConfig)
    regions: dict[str, RegionConfig] = Field(min_length=1)
    models: dict[str, ModelConfig] = Field(min_length=1)
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    provider_health: ProviderHealthConfig = Field(default_factory=ProviderHealthConfig)
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    # A job expands into questions x models x regions executions: a few KB of body could
    # otherwise queue tens of thousands. Typical jobs have tens.
    max_executions_per_job: int = Field(default=5_000, gt=0)
    http: HttpConfig = Field(default_factory=HttpConfig)
    # Status reads served at once; more wait their turn. Many readers at once would otherwise
    # stand between the scheduler and the event loop at every step of every call (with 50
    # readers, 4 at once left 0.27-0.58x the executions started, 1 at once 0.73-0.93x).
    max_concurrent_reads: int = Field(default=1, gt=0)
    shutdown_grace_s: float = Field(default=30.0, ge=0, allow_inf_nan=False)
    # `serve`'s log lines: for people ("text") or one JSON object each ("json", see logs).
    log_format: Literal["text", "json"] = "text"
    retry_base_s: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    retry_max_s: float = Field(default=60.0, gt=0, allow_inf_nan=False)
    priority_aging_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    # How the account's free GPUs are handed out when only its limit binds: as the scheduler
    # plans by running the queue forward ("planned"), or always to the oldest execution.
    share_free_gpus: Literal["planned", "oldest"] = "planned"
    # No users: the router runs open (everyone is the admin "anonymous").
    users: dict[str, UserConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_references(self) -> Settings:
        # ConfigError is not a ValueError, so pydantic lets it through untouched: these
        # problems already carry their full key path, which pydantic's loc would lose.
        problems = _reference_problems(self)
        if problems:
            raise ConfigError("\n".join(problems))
        return self

    @property
    def store_url(self) -> str:
        """The store URL; a relative SQLite path was made absolute against the dir at load."""
        return self.store.url

    def canonical_region(self, name: str) -> str | None:
        """The region named `name` or having it as an alias, ignoring case; else None."""
        return _region_index(self.regions).get(name.strip().casefold())

    def canonical_model(self, name: str) -> str | None:
        """The configured model named `name` (exact, else ignoring case); else None."""
        if name in self.models:
            return name
        folded = name.strip().casefold()
        return next((m for m in self.models if m.casefold() == folded), None)

    def region_specs(self) -> dict[str, Region]:
        """Regions by canonical name, in config order."""
        return {
            name: Region(
                name=name,
                gpu_limit=cfg.gpu_limit,
                aliases=tuple(cfg.aliases),
                max_running=cfg.max_running,
            )
            for name, cfg in self.regions.items()
        }

    def model_specs(self) -> dict[str, ModelSpec]:
        """Models by name, in config order."""
        return {name: ModelSpec(name=name, gpus=cfg.gpus) for name, cfg in self.models.items()}

    def topology(self) -> Topology:
        """The limits and providers the admission policy decides within."""
        return Topology(
            gpu_limit=self.gpu_limit,
            regions=self.region_specs(),
            models=self.model_specs(),
            providers=self.provider_specs(),
            priority_aging_s=self.priority_aging_s,
            planned_share=self.share_free_gpus == "planned",
        )

    def provider_specs(self) -> dict[str, ProviderSpec]:
        """Providers by name, their region and models canonical."""
        specs: dict[str, ProviderSpec] = {}
        for name, cfg in self.providers.items():
            region = self.canonical_region(cfg.region)
            assert region is not None  # checked by _check_references
            models = tuple(dict.fromkeys(self.canonical_model(m) or m for m in cfg.models))
            specs[name] = ProviderSpec(
                name=name,
                kind=ProviderKind(cfg.kind),
                region=region,
                models=models,
                url=cfg.url,
                token_env=cfg.token_env,
                token_id_env=cfg.token_id_env,
                token_secret_env=cfg.token_secret_env,
                timeout_s=cfg.timeout_s,
                scaledown_window_s=cfg.scaledown_window_s,
                max_inputs=cfg.max_inputs,
                max_containers=cfg.max_containers,
                max_response_bytes=cfg.max_response_bytes,
                time_scale=1.0 if cfg.time_scale is None else cfg.time_scale,
                seed=0 if cfg.seed is None else cfg.seed,
            )
        return specs


class ServerSettings(BaseSettings):
    """Where `serve` listens and where its config comes from (env HYBRID_ROUTER_*)."""

    # An empty variable is one not set, as platforms' environment panels tend to mean it.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # The config file's path, or the whole file's text: for platforms where settings come
    # from an environment panel and a file on disk is awkward. At most one of the two.
    config: Path | None = None
    config_toml: str | None = None


# Top-level settings that are tables of named entries stay in the TOML: a variable holding
# JSON for them would be a second, worse config language.
_TABLES = ("regions", "models", "providers", "users")
# The client commands' own variables: known, so not reported as typos.
_CLIENT_VARIABLES = ("URL", "API_KEY")


def _optional_fields(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s fields, each optional (None: not set) and with its own constraints."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if name in _TABLES:
            continue
        annotation: Any = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            # Not strict, unlike the TOML: a variable's value is always text.
            annotation = create_model(
                f"{annotation.__name__}FromEnvironment",
                __config__=ConfigDict(extra="forbid"),
                **_optional_fields(annotation),
            )
        elif info.metadata:
            annotation = Annotated[annotation, *info.metadata]
        fields[name] = (annotation | None, None)
    return fields


class _FromEnvironment(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", env_ignore_empty=True, frozen=True
    )


def _environment_settings() -> type[BaseSettings]:
    """A settings class reading HYBRID_ROUTER_GPU_LIMIT, HYBRID_ROUTER_STORE__URL, ...: every
    top-level setting of the config file but its tables, and `[store]`'s keys one by one."""
    return create_model(
        "EnvironmentSettings", __base__=_FromEnvironment, **_optional_fields(Settings)
    )


def environment_variables() -> dict[str, str]:
    """Each variable that may set a config key -> that key, e.g. HYBRID_ROUTER_STORE__URL ->
    store.url."""
    names: dict[str, str] = {}
    for name, info in Settings.model_fields.items():
        if name in _TABLES:
            continue
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for inner in annotation.model_fields:
                names[f"{ENV_PREFIX}{name}__{inner}".upper()] = f"{name}.{inner}"
        else:
            names[f"{ENV_PREFIX}{name}".upper()] = name
    return names


def unknown_environment_variables(env: Mapping[str, str] | None = None) -> list[str]:
    """HYBRID_ROUTER_* variables set that nothing reads: most likely typos."""
    env = os.environ if env is None else env
    known = set(environment_variables())
    known |= {f"{ENV_PREFIX}{name}".upper() for name in ServerSettings.model_fields}
    known |= {f"{ENV_PREFIX}{name}" for name in _CLIENT_VARIABLES}
    return sorted(
        name
        for name in env
        if name.upper().startswith(ENV_PREFIX)
        and name.upper() not in known
        # The test suite's own (tests/store/conftest.py).
        and not name.upper().startswith(f"{ENV_PREFIX}TEST_")
    )


def server_settings() -> ServerSettings:
    """HYBRID_ROUTER_HOST / _PORT / _CONFIG / _CONFIG_TOML; ConfigError naming a bad one."""
    try:
        return ServerSettings()
    except ValidationError as exc:
        raise ConfigError(_environment_report(exc)) from None


def settings_from_environment(path: Path | None = None) -> Settings:
    """The config `serve` runs: the file `path`, else HYBRID_ROUTER_CONFIG_TOML's text or
    HYBRID_ROUTER_CONFIG's file, else the built-in one; with HYBRID_ROUTER_* settings
    (HYBRID_ROUTER_GPU_LIMIT, HYBRID_ROUTER_STORE__URL, ...) over what it says.

    Read when called, never at import. ConfigError names the variable or key at fault.
    """
    server = server_settings()
    if path is None and server.config is not None and server.config_toml is not None:
        raise ConfigError(
            f"set {ENV_PREFIX}CONFIG (a file) or {ENV_PREFIX}CONFIG_TOML (its text), not both"
        )
    if path is None and server.config_toml is not None:
        source, text = f"{ENV_PREFIX}CONFIG_TOML", server.config_toml
    else:
        source, text = _config_text(path if path is not None else server.config)
    data = _parse_toml(source, text)
    try:
        overrides = _environment_settings()().model_dump(exclude_none=True)
    except ValidationError as exc:
        raise ConfigError(_environment_report(exc)) from None
    except SettingsError as exc:
        # pydantic-settings parses a variable named for a whole table as JSON.
        raise ConfigError(
            f"invalid {ENV_PREFIX}* environment: {exc}; set one key per variable, "
            f"e.g. {ENV_PREFIX}STORE__URL"
        ) from None
    for key, value in overrides.items():
        if isinstance(value, dict):
            base = data.get(key)
            data[key] = {**(base if isinstance(base, dict) else {}), **value}
        else:
            data[key] = value
    given = {key: var for var, key in environment_variables().items() if _is_set(var)}
    return settings_from_mapping(data, source=source, from_environment=given)


def _is_set(variable: str) -> bool:
    return any(name.upper() == variable and value for name, value in os.environ.items())


def _environment_report(exc: ValidationError) -> str:
    """One line per bad variable, named as the user set it; never its value (a secret?)."""
    lines = []
    for err in exc.errors():
        variable = ENV_PREFIX + "__".join(str(part) for part in err["loc"]).upper()
        if err["type"] in ("model_type", "dict_type"):
            problem = f"is a table: set one key per variable, e.g. {variable}__URL"
        else:
            problem = _describe(err)
        lines.append(f"  {variable}: {problem}")
    return f"invalid {ENV_PREFIX}* environment:\n" + "\n".join(lines)


def _config_text(path: Path | None) -> tuple[str, str]:
    """(where it came from, the TOML text) of a config file, or of the built-in one."""
    if path is None:
        source = f"<built-in {DEFAULT_CONFIG}>"
        return source, resources.files("hybrid_router").joinpath(DEFAULT_CONFIG).read_text("utf-8")
    source = str(path)
    try:
        return source, Path(path).read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read config file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text: {exc}") from None


def _parse_toml(source: str, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None


def load_settings(path: Path | None) -> Settings:
    """Read and validate a config file, or the built-in default when `path` is None."""
    source, text = _config_text(path)
    return settings_from_mapping(_parse_toml(source, text), source=source)


def settings_from_mapping(
    data: dict[str, Any],
    *,
    source: str = "config",
    from_environment: Mapping[str, str] | None = None,
) -> Settings:
    """Validate parsed TOML; every problem becomes one `key.path: message` line.

    `from_environment` maps keys set by variables to those variables, so that a problem
    with one names the variable too.
    """
    origins = from_environment or {}

    def named(key: str) -> str:
        variable = origins.get(key)
        return key if variable is None else f"{key} (from {variable})"

    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        lines = [f"{named(format_key(err['loc']))}: {_describe(err)}" for err in exc.errors()]
        raise ConfigError(_report(source, lines)) from None
    except ConfigError as exc:
        lines = []
        for line in exc.message.splitlines():
            key, sep, rest = line.partition(": ")
            lines.append(f"{named(key)}{sep}{rest}")
        raise ConfigError(_report(source, lines)) from None


def format_key(loc: tuple[int | str, ...]) -> str:
    """A pydantic location as the TOML key path a user would write (quoting dotted names)."""
    parts = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif _BARE_KEY.match(part):
            parts.append(f".{part}")
        else:
            parts.append(f'."{part}"')
    return "".join(parts).lstrip(".") or "<top level>"


def _describe(err: Any) -> str:
    """Pydantic's message, reworded where its wording would confuse a config author."""
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    return str(err["msg"])


def _report(source: str, lines: list[str]) -> str:
    return f"invalid config {source}:\n" + "\n".join(f"  {line}" for line in lines)


def _region_index(regions: dict[str, RegionConfig]) -> dict[str, str]:
    """Casefolded name or alias -> canonical region name."""
    index: dict[str, str] = {}
    for name, cfg in regions.items():
        for spelling in (name, *cfg.aliases):
            index.setdefault(spelling.strip().casefold(), name)
    return index


def _reference_problems(s: Settings) -> list[str]:
    """Everything wrong across sections, one line each naming the key."""
    problems: list[str] = []

    # Region names and aliases share one namespace, compared ignoring case: a spelling that
    # could mean two regions is exactly the wrong-region bug this service exists to prevent.
    seen: dict[str, str] = {}
    for name, cfg in s.regions.items():
        for i, spelling in enumerate((name, *cfg.aliases)):
            key = f"regions.{name}" if i == 0 else f"regions.{name}.aliases"
            folded = spelling.strip().casefold()
            if not folded:
                problems.append(f"{key}: empty region name or alias")
                continue
            owner = seen.setdefault(folded, name)
            if owner != name:
                problems.append(f"{key}: '{spelling}' already names region {owner}")

    folded_models: dict[str, str] = {}
    for name in s.models:
        other = folded_models.setdefault(name.casefold(), name)
        if other != name:
            problems.append(f"{format_key(('models', name))}: same name as '{other}' ignoring case")

    if s.retry_max_s < s.retry_base_s:
        problems.append(f"retry_max_s: {s.retry_max_s} is less than retry_base_s {s.retry_base_s}")

    index = _region_index(s.regions)
    known_regions = ", ".join(s.regions)
    known_models = ", ".join(s.models)
    for pname, p in s.providers.items():
        key = format_key(("providers", pname))
        region = index.get(p.region.strip().casefold())
        if region is None:
            problems.append(f"{key}.region: unknown region '{p.region}' (known: {known_regions})")
        for model in p.models:
            canonical = s.canonical_model(model)
            if canonical is None:
                problems.append(f"{key}.models: unknown model '{model}' (known: {known_models})")
                continue
            gpus = s.models[canonical].gpus
            mkey = format_key(("models", canonical, "gpus"))
            if gpus > s.gpu_limit:
                problems.append(f"{mkey}: {gpus} GPUs exceed the global gpu_limit {s.gpu_limit}")
            elif region is not None and gpus > s.regions[region].gpu_limit:
                problems.append(
                    f"{mkey}: {gpus} GPUs exceed regions.{region}.gpu_limit "
                    f"{s.regions[region].gpu_limit} (served there by {key})"
                )
        if p.kind in ("modal", "openai") and not p.url.startswith(("http://", "https://")):
            problems.append(f"{key}.url: kind '{p.kind}' needs an http(s) URL")
        if p.kind != "simulated":
            for opt in ("time_scale", "seed"):
                if getattr(p, opt) is not None:
                    problems.append(f"{key}.{opt}: only for kind 'simulated'")
        if p.kind != "modal":
            for opt in ("token_id_env", "token_secret_env"):
                if getattr(p, opt) is not None:
                    problems.append(f"{key}.{opt}: only for kind 'modal' (Modal proxy auth)")
        elif (p.token_id_env is None) != (p.token_secret_env is None):
            # Modal's proxy refuses a call that lacks either header.
            problems.append(f"{key}: give both token_id_env and token_secret_env, or neither")
        for opt in ("token_env", "token_id_env", "token_secret_env"):
            variable = getattr(p, opt)
            if variable is None:
                continue
            # Name the variable, never its value: config errors end up in logs.
            if not variable:
                problems.append(f"{key}.{opt}: empty variable name")
            elif not os.environ.get(variable):
                problems.append(f"{key}.{opt}: environment variable {variable} is not set")

    problems.extend(_store_problems(s.store.url))
    problems.extend(_user_problems(s.users))
    return problems


def _user_problems(users: dict[str, UserConfig]) -> list[str]:
    problems: list[str] = []
    digests: dict[str, str] = {}
    for name, user in users.items():
        key = format_key(("users", name))
        if not name.strip():
            problems.append(f"{key}: empty user name")
        if user.api_key_env is not None:
            # Name the variable, never its value: config errors end up in logs.
            if not user.api_key_env:
                problems.append(f"{key}.api_key_env: empty variable name")
            elif not os.environ.get(user.api_key_env):
                problems.append(
                    f"{key}.api_key_env: environment variable {user.api_key_env} is not set"
                )
        if user.api_key_sha256 is not None:
            other = digests.setdefault(user.api_key_sha256, name)
            if other != name:
                # One key for two users could not tell them apart.
                problems.append(f"{key}.api_key_sha256: same key as users.{other}")
    return problems


def _store_problems(url: str) -> list[str]:
    if url.startswith("sqlite:///"):
        if url == "sqlite:///":
            return ["store.url: sqlite URL has no path (sqlite:///PATH)"]
        return []
    scheme = url.partition("://")[0].lower()
    if scheme in REDIS_SCHEMES:
        try:
            check_redis_url(url)
        except ConfigError as exc:
            return [f"store.url: {exc.message}"]
        return []
    # Only the scheme: the rest of the url may hold a password.
    return [
        f"store.url: unsupported scheme '{scheme}' (use sqlite:///PATH, redis://HOST:PORT/DB, "
        "rediss://... for TLS or redis+sentinel://HOST:PORT/MASTER)"
    ]


def _absolute_store_url(url: str) -> str:
    """`sqlite:///rel.db` -> `sqlite:////cwd/rel.db`, so a later chdir cannot move the store."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return url
    path = url[len(prefix) :]
    if not path or path == ":memory:" or Path(path).is_absolute():
        return url
    return prefix + str(Path.cwd() / path)
