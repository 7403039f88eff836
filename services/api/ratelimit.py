"""Per-key rate limit shared by every API process: a token bucket kept in Redis (GCRA).

Each key may send ``limit`` requests at once and then one every ``60 / limit`` seconds, so
no minute ever sees more than about ``2 x limit`` (a full bucket plus its refill) and a
steady client gets ``limit`` a minute. One Lua script reads Redis's own clock and updates one
key per client atomically, so API processes on different hosts agree without clock sync.
"""

from __future__ import annotations

import hashlib
import logging
import math

import redis.asyncio as aioredis

from services.common.errors import RateLimited
from services.common.protocol.keys import RATE_LIMIT_PREFIX
from services.common.protocol.scripts import take_token

logger = logging.getLogger(__name__)

KEY_PREFIX = RATE_LIMIT_PREFIX


def client_id(digest: bytes | None, address: str) -> str:
    """The bucket's name: the key's digest, or the client address when keys are off."""
    # Hash the address too so a Redis KEYS listing shows no addresses in clear.
    raw = digest if digest is not None else f"addr:{address}".encode()
    return hashlib.sha256(raw).hexdigest()[:32]


class RateLimiter:
    """``check(client)`` raises RateLimited (429 with Retry-After) once a bucket is empty."""

    def __init__(self, client: aioredis.Redis, per_minute: int) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be >= 1; use no limiter to switch it off")
        self.per_minute = per_minute
        self._interval_ms = 60_000 / per_minute
        self._tolerance_ms = self._interval_ms * (per_minute - 1)
        self._client = client

    async def check(self, client: str) -> None:
        """Take one request from ``client``'s bucket or raise RateLimited."""
        allowed, wait_ms = await take_token(
            self._client, client, interval_ms=self._interval_ms, tolerance_ms=self._tolerance_ms
        )
        if not allowed:
            retry_after = max(1, math.ceil(wait_ms / 1000))
            logger.debug("client %s rate limited for %d s", client[:8], retry_after)
            raise RateLimited(
                f"more than VISIONQ_RATE_LIMIT_PER_MINUTE={self.per_minute} requests a minute "
                f"for this key; retry in {retry_after} s",
                retry_after_s=retry_after,
            )
