"""What the API process holds for its lifetime: settings, Redis, Celery, the waiter."""

from __future__ import annotations

from dataclasses import dataclass, field

import redis.asyncio as aioredis
from celery import Celery
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from models.specs import ModelSpec
from services.api.waiter import ResultWaiter
from services.common.redis_memory import aread_memory
from services.common.settings import ApiSettings


@dataclass
class ApiState:
    """Shared objects of one API process."""

    settings: ApiSettings
    redis: aioredis.Redis
    celery: Celery
    waiter: ResultWaiter
    registry: dict[str, ModelSpec]
    # The submit path's byte budget (VISIONQ_QUEUE_MAX_BYTES, else derived from Redis's
    # maxmemory once read); 0 = none. ``memory_checked``: the eviction policy was read.
    queue_max_bytes: int = 0
    memory_checked: bool = False
    # settings.key_digests, read on every request: a pydantic private attribute costs ~2 us.
    key_digests: tuple[bytes, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.key_digests = self.settings.key_digests


def make_async_redis(settings: ApiSettings) -> aioredis.Redis:
    """A client that fails within ~redis_timeout_s when Redis is down, and reconnects later."""
    return aioredis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=settings.redis_timeout_s,
        socket_timeout=settings.redis_timeout_s,
        health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
        max_connections=256,
    )


async def check_redis_memory(state: ApiState) -> bool:
    """Read Redis's eviction policy and maxmemory once (start-up, else first /readyz).

    Sets the submit path's byte budget. False while Redis does not answer; raises
    ConfigError on an evicting policy while VISIONQ_REDIS_POLICY_CHECK is on.
    """
    if state.memory_checked:
        return True
    memory = await aread_memory(state.redis, check=state.settings.redis_policy_check)
    if memory is None:
        return False
    state.queue_max_bytes = memory.queue_max_bytes(state.settings.queue_max_bytes)
    state.memory_checked = True
    return True
