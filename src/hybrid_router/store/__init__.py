"""Persistence behind one protocol in domain terms."""

from __future__ import annotations

from hybrid_router.errors import ConfigError
from hybrid_router.store.base import Store
from hybrid_router.store.sqlite import SQLiteStore

__all__ = ["SQLiteStore", "Store", "store_from_url"]


def store_from_url(url: str) -> Store:
    """The store a `[store] url` names: `sqlite:///relative.db`, `sqlite:////abs.db`."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ConfigError(
            f"store url {url!r} has no scheme: use sqlite:///path.db or redis://host:port/db"
        )
    if scheme == "sqlite":
        # As in SQLAlchemy: the third slash ends the (empty) host, whatever follows is the
        # path, so sqlite:///a.db is relative and sqlite:////srv/a.db absolute.
        if not rest.startswith("/") or len(rest) == 1:
            raise ConfigError(
                f"store url {url!r}: a SQLite url is sqlite:///relative/path.db or "
                "sqlite:////absolute/path.db (three slashes, then the path)"
            )
        path = rest[1:]
        if path == ":memory:":
            raise ConfigError(
                f"store url {url!r}: an in-memory SQLite store would lose every job on restart; "
                "give a file path"
            )
        return SQLiteStore(path)
    if scheme in ("redis", "rediss"):
        raise ConfigError("redis store not available yet")
    raise ConfigError(
        f"store url {url!r}: unknown scheme {scheme!r}, "
        "use sqlite:///path.db or redis://host:port/db"
    )
