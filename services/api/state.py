"""What the API process holds for its lifetime: settings, Redis, Celery, the waiter."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from celery import Celery
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from models.specs import ModelSpec
from services.api.waiter import ResultWaiter
from services.common.settings import ApiSettings


@dataclass
class ApiState:
    """Shared objects of one API process."""

    settings: ApiSettings
    redis: aioredis.Redis
    celery: Celery
    waiter: ResultWaiter
    registry: dict[str, ModelSpec]


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
