"""The HTTP API: thin FastAPI routers over RouterService, errors mapped in one place."""

from hybrid_router.api.app import create_app

__all__ = ["create_app"]
