"""ASGI entry for running the router under uvicorn (or any ASGI server) directly.

Nothing is read at import: settings come from the environment (HYBRID_ROUTER_CONFIG names the
TOML file, or HYBRID_ROUTER_CONFIG_TOML holds its text; unset means the built-in default;
HYBRID_ROUTER_GPU_LIMIT, HYBRID_ROUTER_STORE__URL, ... set single keys over it) when the app
is first asked for. Either

    uvicorn --factory hybrid_router.main:create

or, as the design names it,

    uvicorn hybrid_router.main:app

(`app` is built on first attribute access, through the module's `__getattr__`). The
`hybrid-router serve` command is the friendlier way: it reports config errors without a
traceback. HYBRID_ROUTER_HOST / _PORT are for `serve`; with uvicorn use its own --host/--port.
"""

from __future__ import annotations

from fastapi import FastAPI

from hybrid_router.api import create_app
from hybrid_router.settings import settings_from_environment

_app: FastAPI | None = None


def create() -> FastAPI:
    """A new app from the environment's config (see settings_from_environment); uvicorn's
    --factory."""
    return create_app(settings_from_environment())


def __getattr__(name: str) -> FastAPI:
    """`hybrid_router.main.app`, built once on first access rather than at import."""
    global _app
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _app is None:
        _app = create()
    return _app
