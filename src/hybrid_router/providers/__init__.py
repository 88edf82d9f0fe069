"""Providers: one protocol, `run(request) -> Completion`, failures as ProviderFailure."""
