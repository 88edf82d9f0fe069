"""A RouterService over a real SQLite file and a shared simulated account, in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from hybrid_router.providers import build_provider
from hybrid_router.providers.simulated import SimulatedCloud
from hybrid_router.runtime.service import RouterService
from hybrid_router.settings import Settings, settings_from_mapping
from hybrid_router.store.sqlite import SQLiteStore

TIME_SCALE = 0.001  # a 7B call takes 0.15 s, a scaledown window 0.12 s
SCALEDOWN_S = 120 * TIME_SCALE
MODELS = ["llama3.2-1b", "mistral-7b", "qwen2.5-1.5b"]


def config(
    tmp_path: Path, *, gpu_limit: int = 10, region_limit: int = 3, **extra: Any
) -> dict[str, Any]:
    regions = {"US": ["us-east"], "EU": ["eu-west"], "ASIA": ["apac"]}
    return {
        "gpu_limit": gpu_limit,
        "retry_base_s": 0.01,
        "retry_max_s": 0.05,
        "shutdown_grace_s": 5,
        "store": {"url": f"sqlite:///{tmp_path / 'router.db'}"},
        "regions": {r: {"gpu_limit": region_limit, "aliases": a} for r, a in regions.items()},
        "models": {m: {"gpus": 1} for m in MODELS},
        "providers": {
            f"sim-{r.lower()}": {
                "kind": "simulated",
                "region": r,
                "models": MODELS,
                "time_scale": TIME_SCALE,
                "timeout_s": 600 * TIME_SCALE,
                "scaledown_window_s": SCALEDOWN_S,
            }
            for r in regions
        },
        **extra,
    }


ServiceFactory = Callable[[Settings, SimulatedCloud], RouterService]


@pytest.fixture
async def make_service() -> AsyncIterator[ServiceFactory]:
    """Builds services on a shared simulated account; every one still running is stopped."""
    made: list[RouterService] = []

    def make(settings: Settings, cloud: SimulatedCloud) -> RouterService:
        providers = {
            name: build_provider(spec, env={}, cloud=cloud)
            for name, spec in settings.provider_specs().items()
        }
        service = RouterService(
            settings, SQLiteStore(settings.store_url[len("sqlite:///") :]), providers
        )
        made.append(service)
        return service

    yield make
    for service in made:
        await service.stop()


def settings_for(tmp_path: Path, **kwargs: Any) -> Settings:
    return settings_from_mapping(config(tmp_path, **kwargs))


def new_cloud(gpu_limit: int = 10, seed: int = 7) -> SimulatedCloud:
    return SimulatedCloud(gpu_limit, TIME_SCALE, SCALEDOWN_S, seed=seed)
