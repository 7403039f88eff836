"""The worker's side of the job record: claim a batch, store a batch, one round trip each."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.typing import EncodableT

from services.common.jobs import (
    CLAIM_LUA,
    DONE_CHANNEL,
    Status,
    image_key,
    job_key,
)
from services.common.lua import lua

logger = logging.getLogger(__name__)


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
        self._finish = client.register_script(lua("finish"))
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

    def finish(self, outcomes: Sequence[Outcome]) -> None:
        """Store every outcome, drop the images, wake waiters: one atomic script call.

        The script may write while Redis is full (allow-oom): each job it ends frees its image.
        """
        keys = [DONE_CHANNEL]
        args: list[EncodableT] = [self._result_ttl_s, time.time()]
        for out in outcomes:
            keys += [job_key(out.job_id), image_key(out.job_id)]
            args += [out.job_id, out.status.value, _json(out.result), _json(out.error)]
            args.append(_json(out.timings))
        self._finish(keys=keys, args=args)

    def finish_until_stored(self, outcomes: Sequence[Outcome], stop_after_s: float) -> bool:
        """Retry ``finish`` while Redis is away: a result not stored must not be acked."""
        deadline = time.monotonic() + stop_after_s
        delay = 0.1
        while True:
            try:
                self.finish(outcomes)
                return True
            except redis.RedisError as exc:
                if time.monotonic() > deadline:
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
