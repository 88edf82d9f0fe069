"""Persistence behind one protocol in domain terms."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from hybrid_router.errors import ConfigError
from hybrid_router.store.base import Store
from hybrid_router.store.redis import RedisStore
from hybrid_router.store.redis_connect import SCHEMES as REDIS_SCHEMES
from hybrid_router.store.redis_connect import check_url as check_redis_url
from hybrid_router.store.sqlite import SQLiteStore

__all__ = ["RedisStore", "SQLiteStore", "Store", "store_from_url"]


def store_from_url(url: str, *, retention_s: float = 7 * 86400, lease_ttl_s: float = 5.0) -> Store:
    """The store a `[store] url` names (`retention_s` and `lease_ttl_s` are Redis's).

    `sqlite:///relative.db`, `sqlite:////abs.db`, `redis[s]://host:port/db?prefix=hr`, or
    `redis[s]+sentinel://host:port,host:port/master/db?prefix=hr` (see store.redis_connect).
    """
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
    if scheme in REDIS_SCHEMES:
        return _redis_store(url, retention_s=retention_s, lease_ttl_s=lease_ttl_s)
    raise ConfigError(
        f"store url {url!r}: unknown scheme {scheme!r}, "
        "use sqlite:///path.db, redis://host:port/db or redis+sentinel://host:port/master"
    )


def _redis_store(url: str, *, retention_s: float, lease_ttl_s: float) -> RedisStore:
    """`?prefix=` names the key prefix (default "hr"); the rest of the url goes to redis-py."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((v for k, v in reversed(query) if k == "prefix"), "hr")
    if not prefix:
        # Not the url itself in the message: it may hold a password.
        raise ConfigError("redis store url: ?prefix= is empty; give a key prefix, e.g. hr")
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    redis_url = urlunsplit(parts._replace(query=rest))
    check_redis_url(redis_url)
    return RedisStore(
        redis_url,
        prefix=prefix,
        retention_s=retention_s,
        lease_ttl_s=lease_ttl_s,
    )
