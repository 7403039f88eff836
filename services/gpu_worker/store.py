"""The worker's side of the job record: claim a batch, store a batch, one round trip each."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from services.common.jobs import (
    CLAIM_LUA,
    DONE_CHANNEL,
    Status,
    image_key,
    job_key,
)

logger = logging.getLogger(__name__)

HURRIED_STORE_S = 5.0  # how long a shutting-down worker retries storing its last batch

# KEYS[1]=done channel, then job/image key pairs. ARGV: worker, now, result ttl, then per
# job (id, status, result, error, timings; '' for none). A result is stored only by the
# worker that holds the job's claim: after a worker was declared dead (reaper.py) and its
# job claimed again elsewhere, a late finish from it (it was only paused) stores nothing,
# and neither does a second finish of a job already terminal. Returns 1/0 per job.
_FINISH_LUA = """
local out = {}
local n = (#KEYS - 1) / 2
for i = 0, n - 1 do
  local jk, ik, a = KEYS[2 + 2*i], KEYS[3 + 2*i], 4 + 5*i
  local st, w = unpack(redis.call('HMGET', jk, 'status', 'worker'))
  if st == 'running' and w == ARGV[1] then
    redis.call('HSET', jk, 'status', ARGV[a + 1], 'finished', ARGV[2])
    if ARGV[a + 2] ~= '' then redis.call('HSET', jk, 'result', ARGV[a + 2]) end
    if ARGV[a + 3] ~= '' then redis.call('HSET', jk, 'error', ARGV[a + 3]) end
    if ARGV[a + 4] ~= '' then redis.call('HSET', jk, 'timings', ARGV[a + 4]) end
    -- Counts how often a result was written: the fault tests prove it stays 1.
    redis.call('HINCRBY', jk, 'stores', 1)
    redis.call('EXPIRE', jk, ARGV[3])
    redis.call('DEL', ik)
    redis.call('PUBLISH', KEYS[1], ARGV[a])
    out[i + 1] = 1
  else
    out[i + 1] = 0
  end
end
return out
"""


def _json(value: dict[str, Any] | None) -> str:
    return "" if value is None else json.dumps(value, separators=(",", ":"))


@dataclass(frozen=True)
class Claim:
    """What the claim script said about one job."""

    verdict: str  # run | skip | expired | worker_lost
    deliveries: int
    created: float | None
    top_k: int
    image: bytes


@dataclass
class Outcome:
    """The end of one job, ready to store."""

    job_id: str
    status: Status
    result: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    timings: dict[str, Any] | None = None


class JobStore:
    """Sync Redis access for the worker's two hot-path operations."""

    def __init__(self, client: redis.Redis, result_ttl_s: int, max_deliveries: int) -> None:
        self._client = client
        self._claim = client.register_script(CLAIM_LUA)
        self._finish = client.register_script(_FINISH_LUA)
        self._result_ttl_s = result_ttl_s
        self._max_deliveries = max_deliveries

    @property
    def client(self) -> redis.Redis:
        """The Redis connection this store uses."""
        return self._client

    def claim(self, job_ids: Sequence[str], worker: str, solo: bool = False) -> list[Claim]:
        """Mark the jobs running (or end them: expired, cancelled, poison) and fetch images.

        Without ``solo``, redelivered jobs come back as ``suspect`` and are not counted.
        """
        keys = [DONE_CHANNEL]
        for job_id in job_ids:
            keys += [job_key(job_id), image_key(job_id)]
        mode = "solo" if solo else "batch"
        args: list[Any] = [time.time(), self._max_deliveries, self._result_ttl_s, worker, mode]
        raw = self._claim(keys=keys, args=[*args, *job_ids])
        claims = []
        for verdict, deliveries, created, top_k, image in raw:
            claims.append(
                Claim(
                    verdict=verdict.decode(),
                    deliveries=int(deliveries),
                    created=float(created) if created else None,
                    top_k=int(top_k) if top_k else 5,
                    image=image or b"",
                )
            )
        return claims

    def finish(self, outcomes: Sequence[Outcome], worker: str) -> int:
        """Store every outcome this worker still owns, drop the images, wake waiters.

        One round trip. Returns how many were stored; the others belong to another worker
        now (this one was declared dead and came back) or had ended already.
        """
        keys = [DONE_CHANNEL]
        args: list[Any] = [worker, time.time(), self._result_ttl_s]
        for out in outcomes:
            keys += [job_key(out.job_id), image_key(out.job_id)]
            args += [out.job_id, out.status.value, _json(out.result), _json(out.error),
                     _json(out.timings)]  # fmt: skip
        stored = sum(int(flag) for flag in self._finish(keys=keys, args=args))
        if stored < len(outcomes):
            logger.warning(
                "%d of %d result(s) not stored: their jobs were claimed again elsewhere "
                "or had ended",
                len(outcomes) - stored,
                len(outcomes),
            )
        return stored

    def finish_until_stored(
        self,
        outcomes: Sequence[Outcome],
        worker: str,
        stop_after_s: float,
        hurry: Callable[[], bool] = lambda: False,
    ) -> bool:
        """Retry ``finish`` while Redis is away: a result not stored must not be acked.

        ``hurry`` (the worker is shutting down) cuts the retries to a few seconds: the
        message then stays unacked and the reaper hands it back.
        """
        start = time.monotonic()
        delay = 0.1
        while True:
            try:
                self.finish(outcomes, worker)
                return True
            except redis.RedisError as exc:
                spent = time.monotonic() - start
                if spent > stop_after_s or (hurry() and spent > HURRIED_STORE_S):
                    logger.error("could not store %d results: %s", len(outcomes), exc)
                    return False
                logger.warning("storing results failed (%s); retrying in %.1fs", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def ended_as(self, job_id: str) -> tuple[str, dict[str, str] | None]:
        """A job's stored status and error (``""`` when the record is gone)."""
        status, error = self._client.hmget(job_key(job_id), ["status", "error"])
        text = status.decode() if isinstance(status, bytes) else (status or "")
        return text, json.loads(error) if error else None
