"""Redis memory as a budget: read the eviction policy and ``maxmemory`` at start-up.

visionq keeps every job as Redis keys, so a Redis that evicts keys under memory pressure
loses accepted jobs silently (measured: 41.5 % of 600 jobs with ``allkeys-lru``). Only
``noeviction`` is safe: Redis then refuses writes instead, which the API answers with 429
``queue_full`` (its byte budget, below ``maxmemory``) or 503 ``storage_full``. The API and
the workers call :func:`read_memory` at start and refuse to run on an evicting policy.
Managed Redis services may hide ``CONFIG``; ``VISIONQ_REDIS_POLICY_CHECK=false`` then skips
the check (the operator vouches for ``noeviction``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from services.common.errors import ConfigError

logger = logging.getLogger(__name__)

SAFE_POLICY = "noeviction"
# Share of maxmemory the submit path may fill; the rest is headroom for what accepted jobs
# still write (kombu messages, job records, results) and for Redis's own buffers.
QUEUE_BYTES_SHARE = 0.8


@dataclass(frozen=True)
class RedisMemory:
    """What Redis said about its memory: policy (None when not read) and maxmemory bytes."""

    policy: str | None
    maxmemory: int  # 0: no limit, or not known

    def queue_max_bytes(self, configured: int | None) -> int:
        """The submit path's byte budget: the setting, else a share of maxmemory; 0 = none."""
        if configured is not None:
            return configured
        return int(self.maxmemory * QUEUE_BYTES_SHARE)


def judge(policy: str | None, maxmemory: int, *, check: bool) -> RedisMemory:
    """Refuse an evicting policy (ConfigError) unless the check is off; warn on no limit."""
    if policy is not None and policy != SAFE_POLICY:
        message = (
            f"Redis runs maxmemory-policy {policy!r}, which evicts keys when memory runs out: "
            "queued jobs and their images would be lost without a trace. Set it to "
            "'noeviction' (redis-server --maxmemory-policy noeviction, or CONFIG SET "
            "maxmemory-policy noeviction)"
        )
        if check:
            raise ConfigError(message + "; VISIONQ_REDIS_POLICY_CHECK=false overrides this")
        logger.warning("%s (VISIONQ_REDIS_POLICY_CHECK=false: starting anyway)", message)
    if policy == SAFE_POLICY and maxmemory == 0:
        logger.warning(
            "Redis has no maxmemory: it will grow until the machine or container runs out of "
            "memory; set maxmemory below the container's limit"
        )
    return RedisMemory(policy, maxmemory)


def _config_refused(exc: redis.ResponseError) -> RedisMemory:
    raise ConfigError(
        f"Redis refused CONFIG GET ({exc}), so visionq cannot check that it will not evict "
        "jobs. If this is a managed Redis that hides CONFIG, make sure its policy is "
        "noeviction and set VISIONQ_REDIS_POLICY_CHECK=false"
    ) from exc


def _parse(policy_reply: Mapping[Any, Any], memory_reply: Mapping[Any, Any]) -> tuple[str, int]:
    def text(value: object) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    policy = text(next(iter(policy_reply.values()), ""))
    maxmemory = int(text(next(iter(memory_reply.values()), "0")) or 0)
    return policy, maxmemory


def read_memory(client: redis.Redis, *, check: bool) -> RedisMemory | None:
    """Policy and maxmemory of ``client``'s Redis; None when Redis does not answer.

    Raises ConfigError for an evicting policy or a hidden CONFIG while ``check`` is on.
    """
    try:
        pair = (client.config_get("maxmemory-policy"), client.config_get("maxmemory"))
    except redis.ResponseError as exc:
        if not check:
            return RedisMemory(None, 0)
        return _config_refused(exc)
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return None
    return judge(*_parse(*pair), check=check)


async def aread_memory(client: aioredis.Redis, *, check: bool) -> RedisMemory | None:
    """The asyncio twin of :func:`read_memory` (same answers, same errors)."""
    try:
        pair = (
            await client.config_get("maxmemory-policy"),
            await client.config_get("maxmemory"),
        )
    except redis.ResponseError as exc:
        if not check:
            return RedisMemory(None, 0)
        return _config_refused(exc)
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return None
    return judge(*_parse(*pair), check=check)
