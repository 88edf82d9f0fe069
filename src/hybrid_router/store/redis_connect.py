"""One place that turns a Redis store URL into a redis-py client: plain, TLS or Sentinel.

    redis://[[user]:password@]host:port/db           one Redis
    rediss://...?ssl_ca_certs=/ca.pem                 the same over TLS (managed Redis services)
    redis+sentinel://[[user]:password@]h1:26379,h2:26379/MASTER[/db]
    rediss+sentinel://...                             Sentinel, TLS to Sentinels and master

redis-py parses `redis://` and `rediss://` itself, with every connection option it knows in
the query (`ssl_cert_reqs`, `ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`, `ssl_check_hostname`,
...). It has no URL for Sentinel, so a Sentinel URL is split here into its Sentinels and
master name, and the rest (credentials, db, the same query options) again goes through
redis-py's parser. The credentials are the master's; `sentinel_password` (and
`sentinel_username`) in the query are for Sentinels that require their own.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode

import redis.asyncio as aioredis
from redis.asyncio.connection import Connection, SSLConnection, parse_url
from redis.asyncio.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from hybrid_router.errors import ConfigError

SCHEMES = ("redis", "rediss", "redis+sentinel", "rediss+sentinel")
_SENTINEL_PORT = 26379
_SENTINEL_AUTH = ("sentinel_username", "sentinel_password")


def redis_client(
    url: str, *, max_connections: int | None = None, pool_timeout: float = 2.0, **options: Any
) -> aioredis.Redis:
    """A client for `url` (see check_url); `options` are redis-py connection options
    (timeouts, retry, ...).

    With `max_connections`, a burst waits up to `pool_timeout` for a free connection instead
    of failing with "Too many connections".
    """
    if url.partition("://")[0].lower().endswith("+sentinel"):
        return _sentinel_master(url, max_connections, pool_timeout, options)
    kwargs: dict[str, Any] = {**options, **parse_url(url)}
    tls = kwargs.get("connection_class") is SSLConnection
    kwargs["connection_class"] = _SSLConnection if tls else _Connection
    if max_connections is None:
        return aioredis.Redis.from_pool(aioredis.ConnectionPool(**kwargs))
    pool = aioredis.BlockingConnectionPool(
        max_connections=max_connections, timeout=pool_timeout, **kwargs
    )
    return aioredis.Redis.from_pool(pool)


class _RefusedWithoutReplicas:
    """A NOREPLICAS reply ends the connection and reads as Redis being unavailable.

    With `min-replicas-to-write` set, a master without enough replicas in sync refuses writes.
    That is an outage of the store, not a bad request: the caller sees it as one (503, the
    scheduler waits). Through Sentinel it also marks an old master after a forced failover:
    up, and accepting writes from connections already open to it until Sentinel turns it
    into a replica; writes there would be lost, a lease renewed there would not be the one
    the new master holds. It refuses them once its replica is promoted, and, as after a
    READONLY reply, the next connection asks Sentinel where the master is now.
    """

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)  # type: ignore[misc]
        except ResponseError as exc:
            if not str(exc).startswith("NOREPLICAS"):
                raise
            await self.disconnect()  # type: ignore[attr-defined]
            raise RedisConnectionError(
                "the Redis master has no replica in sync and refuses writes "
                "(min-replicas-to-write; a failover under way?)"
            ) from None


class _Connection(_RefusedWithoutReplicas, Connection):
    pass


class _SSLConnection(_RefusedWithoutReplicas, SSLConnection):
    pass


class _MasterConnection(_RefusedWithoutReplicas, SentinelManagedConnection):
    pass


class _MasterSSLConnection(_RefusedWithoutReplicas, SentinelManagedSSLConnection):
    pass


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """The master's address from Sentinel, and waiting for a free connection under a burst."""


class _SentinelMaster(aioredis.Redis):
    """The master's client; closing it also closes its connections to the Sentinels."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        pool = self.connection_pool
        try:
            await super().aclose(close_connection_pool)
        finally:
            assert isinstance(pool, SentinelConnectionPool)
            await pool.sentinel_manager.aclose()


def check_url(url: str) -> None:
    """ConfigError naming what is wrong with a Redis store url (never echoing the url)."""
    scheme = url.partition("://")[0].lower()
    if scheme not in SCHEMES:
        raise ConfigError(f"redis store url: unknown scheme {scheme!r} (use one of {SCHEMES})")
    if scheme.endswith("+sentinel"):
        _sentinel_parts(url)
        return
    try:
        parse_url(url)
    except ValueError as exc:
        raise ConfigError(f"redis store url: {exc}") from None


def _sentinel_parts(
    url: str,
) -> tuple[list[tuple[str, int]], str, dict[str, Any], dict[str, Any]]:
    """The Sentinels, the master's name, the master's connection options and the Sentinels'."""
    scheme, _, rest = url.partition("://")
    tls = scheme.lower().startswith("rediss")
    netloc, _, tail = rest.partition("/")
    path, _, query = tail.partition("?")
    credentials, _, hosts = netloc.rpartition("@")
    service, _, db = path.partition("/")
    # Never the url itself in a message: it may hold a password.
    shape = f"{scheme}://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER_NAME[/DB]"
    if not hosts or not service:
        raise ConfigError(f"redis store url: a Sentinel url is {shape}")
    sentinels = [_host_port(host, shape) for host in hosts.split(",")]
    pairs = parse_qsl(query, keep_blank_values=True)
    sentinel_auth = {k.removeprefix("sentinel_"): v for k, v in pairs if k in _SENTINEL_AUTH}
    own_query = urlencode([(k, v) for k, v in pairs if k not in _SENTINEL_AUTH])
    auth = f"{credentials}@" if credentials else ""
    try:
        master: dict[str, Any] = dict(
            parse_url(f"{'rediss' if tls else 'redis'}://{auth}sentinel/{db}?{own_query}")
        )
    except ValueError as exc:
        raise ConfigError(f"redis store url: {exc}") from None
    for key in ("host", "port", "connection_class"):
        master.pop(key, None)
    # The Sentinels get the same TLS settings, but not the master's password: Sentinels
    # usually have none, and AUTH to one without a password fails.
    to_sentinels = {k: v for k, v in master.items() if k.startswith("ssl_")}
    to_sentinels.update(sentinel_auth)
    if tls:
        to_sentinels["ssl"] = True
    master["connection_class"] = _MasterSSLConnection if tls else _MasterConnection
    return sentinels, service, master, to_sentinels


def _sentinel_master(
    url: str, max_connections: int | None, pool_timeout: float, options: dict[str, Any]
) -> aioredis.Redis:
    sentinels, service, kwargs, to_sentinels = _sentinel_parts(url)
    kwargs.update(options)
    # Sentinels answer within the same timeouts as the master.
    to_sentinels.update({k: v for k, v in options.items() if k.startswith("socket_")})
    manager = Sentinel(sentinels, sentinel_kwargs=to_sentinels)  # type: ignore[no-untyped-call]
    pool_class: type[SentinelConnectionPool] = SentinelConnectionPool
    if max_connections is not None:
        pool_class = _BlockingSentinelPool
        kwargs.update(max_connections=max_connections, timeout=pool_timeout)
    return manager.master_for(  # type: ignore[no-any-return]
        service, redis_class=_SentinelMaster, connection_pool_class=pool_class, **kwargs
    )


def _host_port(text: str, shape: str) -> tuple[str, int]:
    host, colon, port = text.strip().rpartition(":")
    if not colon:
        host, port = text.strip(), str(_SENTINEL_PORT)
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"redis store url: bad Sentinel address {text!r}; the url is {shape}")
    return host, int(port)
