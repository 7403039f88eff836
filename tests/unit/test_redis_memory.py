"""The eviction-policy check and the byte budget, against a real redis-server."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis
import redis.asyncio as aioredis

from services.common.errors import ConfigError
from services.common.redis_memory import RedisMemory, aread_memory, judge, read_memory
from services.common.redis_server import RedisServer


def test_only_noeviction_passes() -> None:
    assert judge("noeviction", 100, check=True) == RedisMemory("noeviction", 100)
    for policy in ("allkeys-lru", "volatile-lru", "allkeys-random", "volatile-ttl"):
        with pytest.raises(ConfigError, match=policy) as info:
            judge(policy, 100, check=True)
        assert "VISIONQ_REDIS_POLICY_CHECK=false" in info.value.message


def test_override_starts_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert judge("allkeys-lru", 0, check=False).policy == "allkeys-lru"
    assert "allkeys-lru" in caplog.text


def test_budget_is_the_setting_else_a_share_of_maxmemory() -> None:
    memory = RedisMemory("noeviction", 1000)
    assert memory.queue_max_bytes(None) == 800
    assert memory.queue_max_bytes(0) == 0  # explicitly off
    assert memory.queue_max_bytes(5000) == 5000
    assert RedisMemory("noeviction", 0).queue_max_bytes(None) == 0  # no maxmemory: no budget


def test_reads_a_real_redis_sync_and_async() -> None:
    with RedisServer(maxmemory=50_000_000) as server:
        assert read_memory(server.client(), check=True) == RedisMemory("noeviction", 50_000_000)
        server.client().config_set("maxmemory-policy", "allkeys-lru")
        with pytest.raises(ConfigError, match="allkeys-lru"):
            read_memory(server.client(), check=True)

        async def read() -> RedisMemory | None:
            client = aioredis.Redis(port=server.port)
            try:
                return await aread_memory(client, check=False)
            finally:
                await client.aclose()

        assert asyncio.run(read()) == RedisMemory("allkeys-lru", 50_000_000)


def test_hidden_config_needs_the_override() -> None:
    # A managed Redis that renames CONFIG away answers "unknown command".
    with RedisServer(extra_args=["--rename-command", "CONFIG", '""']) as server:
        with pytest.raises(ConfigError, match="VISIONQ_REDIS_POLICY_CHECK=false"):
            read_memory(server.client(), check=True)
        assert read_memory(server.client(), check=False) == RedisMemory(None, 0)


def test_unreachable_redis_is_none() -> None:
    client = redis.Redis(port=1, socket_connect_timeout=0.5)
    assert read_memory(client, check=True) is None
