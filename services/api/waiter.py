"""Server-side wait for job results: one pub/sub listener per API process, no polling.

Workers publish a job id on ``vq:done`` when the job ends, most often with the job's record
(finish_fn.lua), which is kept for the job's waiters so they need not read it back. Waiters
register their ids before the jobs are enqueued, so a fast result cannot slip past. When
the listener reconnects, or every ``recheck_s`` as a safety net, waiters re-read their
jobs' status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

import redis
import redis.asyncio as aioredis

from services.common.jobs import DONE_CHANNEL, TERMINAL, JobRecord, job_key

logger = logging.getLogger(__name__)


class ResultWaiter:
    """Wakes request handlers when their jobs end."""

    def __init__(self, client: aioredis.Redis, recheck_s: float = 2.0) -> None:
        self._client = client
        self._recheck_s = recheck_s
        self._events: dict[str, list[asyncio.Event]] = {}
        # Records that came with done notices, kept only while someone waits for the job.
        self._records: dict[str, bytes] = {}
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    async def start(self) -> None:
        """Start the listener task (it reconnects by itself)."""
        self._task = asyncio.create_task(self._listen(), name="vq-result-listener")

    async def stop(self) -> None:
        """Stop the listener."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def register(self, job_ids: Iterable[str]) -> dict[str, asyncio.Event]:
        """Start listening for these jobs; call before enqueueing them."""
        events = {}
        for job_id in job_ids:
            event = asyncio.Event()
            self._events.setdefault(job_id, []).append(event)
            events[job_id] = event
        return events

    def unregister(self, events: dict[str, asyncio.Event]) -> dict[str, JobRecord]:
        """Forget the events of one request; returns the records their done notices carried.

        A job missing from the answer ended without one (woken by a recheck, or its record
        was too large to publish): read it from Redis.
        """
        records: dict[str, JobRecord] = {}
        for job_id, event in events.items():
            payload = self._records.get(job_id)
            if payload is not None:
                record = JobRecord.from_notice(job_id, payload)
                if record is not None:
                    records[job_id] = record
            waiting = self._events.get(job_id)
            if waiting and event in waiting:
                waiting.remove(event)
                if not waiting:
                    del self._events[job_id]
                    self._records.pop(job_id, None)
        return records

    async def wait(self, events: dict[str, asyncio.Event], timeout: float) -> bool:
        """True when every job ended within ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            pending = [e for e in events.values() if not e.is_set()]
            if not pending:
                return True
            left = deadline - loop.time()
            if left <= 0:
                return False
            try:
                # One timeout scope, no task per event (gather and wait_for make them).
                async with asyncio.timeout(min(left, self._recheck_s)):
                    for event in pending:
                        await event.wait()
            except TimeoutError:
                await self._recheck([j for j, e in events.items() if not e.is_set()])

    async def recheck(self, job_ids: list[str]) -> None:
        """Wake the waiters of jobs that already ended (or are gone) without an event."""
        await self._recheck(job_ids)

    async def _recheck(self, job_ids: list[str]) -> None:
        if not job_ids:
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for job_id in job_ids:
                pipe.hget(job_key(job_id), "status")
            statuses = await pipe.execute()
        except redis.RedisError:
            return
        for job_id, status in zip(job_ids, statuses, strict=True):
            if status is None or status.decode() in TERMINAL:
                self._wake(job_id)

    def _on_notice(self, data: bytes) -> None:
        raw_id, _, payload = data.partition(b"\n")
        job_id = raw_id.decode()
        if payload and job_id in self._events:
            self._records[job_id] = payload
        self._wake(job_id)

    def _wake(self, job_id: str) -> None:
        for event in self._events.get(job_id, ()):
            event.set()

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(DONE_CHANNEL)
                self.connected.set()
                delay = 0.1
                # Results that ended while we were away were published to nobody.
                await self._recheck(list(self._events))
                async for message in pubsub.listen():
                    if message and message.get("type") == "message":
                        self._on_notice(message["data"])
            except asyncio.CancelledError:
                raise
            except (redis.RedisError, OSError) as exc:
                self.connected.clear()
                logger.warning("result listener lost Redis (%s); reconnecting", exc)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
