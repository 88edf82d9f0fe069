"""Ties store, providers and core together: the scheduler and the service the API calls."""
