"""Ties store, providers and core together: the scheduler and the service the API calls."""

from hybrid_router.runtime.service import JobRequest, RouterService, build_service

__all__ = ["JobRequest", "RouterService", "build_service"]
