"""The HTTP API: thin FastAPI routers over RouterService, errors mapped in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hybrid_router.api.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the Python client and the CLI import `api.schemas` for their
    # types, and must not pay for FastAPI, the stores and the providers to get them.
    if name == "create_app":
        from hybrid_router.api.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
