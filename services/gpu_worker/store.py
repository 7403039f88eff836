"""The worker's side of the job record: claim a batch, store a batch, one round trip each."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from services.common.jobs import Status, job_key
from services.common.protocol.scripts import (
    NO_ACKS,
    AckKeys,
    ClaimReply,
    JobEnd,
    claim_jobs,
    finish_jobs,
)

logger = logging.getLogger(__name__)

HURRIED_STORE_S = 5.0  # how long a shutting-down worker retries storing its last batch


Claim = ClaimReply  # what the claim script said about one job


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
        self._result_ttl_s = result_ttl_s
        self._max_deliveries = max_deliveries
        # Where kombu records this worker's unacked messages; when set, ``finish`` acks the
        # messages it is given with their results (see acks.py). tasks.py sets it.
        self.acks: AckKeys | None = None

    @property
    def client(self) -> redis.Redis:
        """The Redis connection this store uses."""
        return self._client

    def claim(self, job_ids: Sequence[str], worker: str, solo: bool = False) -> list[Claim]:
        """Mark the jobs running (or end them: expired, cancelled, poison) and fetch images.

        Without ``solo``, redelivered jobs come back as ``suspect`` and are not counted.
        """
        return claim_jobs(
            self._client,
            list(job_ids),
            now=time.time(),
            max_deliveries=self._max_deliveries,
            result_ttl_s=self._result_ttl_s,
            worker=worker,
            solo=solo,
        )

    def finish(self, outcomes: Sequence[Outcome], worker: str, tags: Sequence[str] = ()) -> int:
        """Store every outcome this worker still owns, drop the images, wake waiters.

        One script call. Returns how many were stored; the others belong to another worker
        now (this one was declared dead and came back) or had ended already. With ``acks``
        set, ``tags`` (the outcomes' delivery tags, in order) are acked in the same call.
        """
        acks = self.acks if tags else None
        if acks is not None and len(tags) != len(outcomes):
            raise ValueError(f"{len(tags)} delivery tags for {len(outcomes)} outcomes")
        ends = [
            JobEnd(o.job_id, o.status.value, o.result, o.error, o.timings, tags[i] if acks else "")
            for i, o in enumerate(outcomes)
        ]
        flags = finish_jobs(
            self._client,
            ends,
            now=time.time(),
            result_ttl_s=self._result_ttl_s,
            worker=worker,
            acks=acks or NO_ACKS,
        )
        stored = sum(flags)
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
        tags: Sequence[str] = (),
    ) -> bool:
        """Retry ``finish`` while Redis is away: a result not stored must not be acked.

        ``hurry`` (the worker is shutting down) cuts the retries to a few seconds: the
        message then stays unacked and the reaper hands it back.
        """
        start = time.monotonic()
        delay = 0.1
        while True:
            try:
                self.finish(outcomes, worker, tags)
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
