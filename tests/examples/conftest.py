"""The provider tests' servers (`kit`), for serving the example's endpoint over HTTP."""

from tests.providers.conftest import _join_stopped_servers, kit

__all__ = ["_join_stopped_servers", "kit"]
