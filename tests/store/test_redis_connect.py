"""Store urls for Redis over TLS and through Sentinel: what redis-py is asked to connect to.

The connections themselves are tried in tests/e2e/test_redis_ha.py (a Sentinel failover, a
TLS server with a self-signed certificate); these check the url forms without a server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection
from redis.asyncio.sentinel import SentinelConnectionPool

from hybrid_router.errors import ConfigError
from hybrid_router.settings import settings_from_mapping
from hybrid_router.store import RedisStore, store_from_url
from hybrid_router.store.redis_connect import redis_client


@pytest.fixture
async def clients() -> AsyncIterator[list[aioredis.Redis]]:
    made: list[aioredis.Redis] = []
    yield made
    for client in made:
        await client.aclose()


async def test_rediss_passes_the_tls_options_of_the_query_to_redis_py(
    clients: list[aioredis.Redis],
) -> None:
    url = "rediss://:s3cret@redis.example:6380/2?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=required"
    client = redis_client(url, max_connections=8)
    clients.append(client)
    pool = client.connection_pool
    assert issubclass(pool.connection_class, SSLConnection)
    kwargs = pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("redis.example", 6380, 2)
    assert kwargs["password"] == "s3cret"
    assert kwargs["ssl_ca_certs"] == "/etc/ca.pem"
    assert kwargs["ssl_cert_reqs"] == "required"
    assert pool.max_connections == 8


async def test_a_sentinel_url_names_its_sentinels_master_and_options(
    clients: list[aioredis.Redis],
) -> None:
    url = (
        "rediss+sentinel://:masterpw@10.0.0.1:26379,10.0.0.2:26380,sentinel-c/mymaster/3"
        "?ssl_ca_certs=/etc/ca.pem&sentinel_password=sentinelpw"
    )
    client = redis_client(url, max_connections=8, socket_timeout=2.0)
    clients.append(client)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "mymaster" and pool.is_master
    assert pool.max_connections == 8
    kwargs = pool.connection_kwargs
    assert (kwargs["db"], kwargs["password"], kwargs["ssl_ca_certs"]) == (
        3,
        "masterpw",
        "/etc/ca.pem",
    )
    assert issubclass(pool.connection_class, SSLConnection)
    sentinels = pool.sentinel_manager.sentinels
    addresses = [
        (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
        for s in sentinels
    ]
    assert addresses == [("10.0.0.1", 26379), ("10.0.0.2", 26380), ("sentinel-c", 26379)]
    to_sentinel = sentinels[0].connection_pool.connection_kwargs
    # Sentinels get their own password, TLS and timeouts, never the master's password.
    assert to_sentinel["password"] == "sentinelpw"
    assert to_sentinel["ssl_ca_certs"] == "/etc/ca.pem"
    assert to_sentinel["socket_timeout"] == 2.0
    assert sentinels[0].connection_pool.connection_class is SSLConnection


def test_the_store_takes_sentinel_urls_and_keeps_its_prefix() -> None:
    store = store_from_url("redis+sentinel://127.0.0.1:26379/mymaster/0?prefix=prod")
    assert isinstance(store, RedisStore)
    assert store.prefix == "prod"
    assert "prefix" not in store.url


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://127.0.0.1:26379", "a Sentinel url is"),
        ("redis+sentinel://:pw@/mymaster", "a Sentinel url is"),
        ("redis+sentinel://127.0.0.1:port/mymaster", "bad Sentinel address '127.0.0.1:port'"),
        ("redis://:pw@127.0.0.1:6379/0?socket_timeout=soon", "Invalid value for 'socket_timeout'"),
    ],
)
def test_a_bad_url_is_a_config_error_naming_the_part_and_not_the_password(
    url: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(
            {"gpu_limit": 1, "regions": {"US": {"gpu_limit": 1}}, "models": {"m": {}},
             "store": {"url": url}}
        )  # fmt: skip
    assert problem in info.value.message
    assert "store.url" in info.value.message
    assert ":pw@" not in info.value.message
