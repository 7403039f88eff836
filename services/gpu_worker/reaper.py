"""Hand a dead worker's messages back within seconds, whatever the visibility timeout.

Every worker registers in ``vq:workers`` and beats ``vq:worker:<id>`` (heartbeat.py, a
TTL of three intervals). Each live worker also watches the others: one whose heartbeat is
gone, and stays gone for ``confirm_s`` while this watcher itself reaches Redis, is dead (a
Redis outage, during which nobody can beat, never counts). The first watcher to take the
per-worker lock then, in this order:

1. fences it (``vq:fenced:<id>``): a worker that was only paused (SIGSTOP) and comes back
   can no longer beat (it exits, see heartbeat.py) nor store a result (store.py stores only
   for the claim's owner), so nothing it finishes late is stored twice;
2. moves every message it held back to the head of its queue (handback.py); a job it had
   claimed is then claimed again as a redelivery, its delivery counted;
3. asks the lost-message sweeper for a prompt pass, for a message the dead worker popped
   (BRPOP) but had not yet recorded as unacked.

Every poll it also gives back orphans: ``unacked`` records fetched more than
``ORPHAN_GRACE_S`` ago that no registered worker's held set names (handback.py). None
should exist (a fenced worker can no longer record a delivery, see broker.py); this is
the net under whatever else could strand one (a held set lost in a Redis restart, a
consumer that records no holdings), which only the visibility timeout would catch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from services.common.jobs import worker_key
from services.common.protocol.scripts import set_add
from services.gpu_worker.handback import WORKERS_INDEX, HandBack, fence_key, held_key

logger = logging.getLogger(__name__)

FENCE_TTL_S = 86400  # outlives any pause a worker could come back from
# Recording a delivery and its holder is one script, so a record with no holder is an orphan
# at once; the grace only spares records of a worker registering right now and clock skew.
ORPHAN_GRACE_S = 5.0


class Reaper:
    """Watches the registered workers' heartbeats and hands back the dead ones' messages."""

    def __init__(
        self,
        client: redis.Redis,
        me: str,
        poll_s: float,
        confirm_s: float,
        on_reaped: Callable[[str, list[str]], None] | None = None,
    ) -> None:
        self._client = client
        self._me = me
        self._poll_s = poll_s
        self._confirm_s = confirm_s
        self._on_reaped = on_reaped
        self._handback = HandBack(client)
        self._missing: dict[str, float] = {}  # worker id -> first seen without heartbeat
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vq-reaper", daemon=True)

    def register(self) -> None:
        """Announce this worker as a holder of messages (after its first heartbeat)."""
        set_add(self._client, WORKERS_INDEX, self._me)  # allow-oom: starts on a full Redis

    def deregister(self) -> None:
        """Leave the index once everything held was acked or handed back."""
        pipe = self._client.pipeline(transaction=False)
        pipe.srem(WORKERS_INDEX, self._me)
        pipe.delete(held_key(self._me))
        pipe.execute()

    def start(self) -> None:
        """Watch in the background until stopped."""
        self._thread.start()

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()
        self._thread.join(self._poll_s + 10)

    def _loop(self) -> None:
        while not self._stop.wait(self._poll_s):
            try:
                self.check()
                self.restore_orphans()
            except (redis.RedisError, OSError) as exc:
                # Seen from here, nobody could beat meanwhile: start every count again.
                self._missing.clear()
                logger.debug("reaper check skipped: %s", exc)

    def check(self, now: float | None = None) -> list[str]:
        """One look at the registered workers; returns the ids reaped now."""
        now = time.monotonic() if now is None else now
        raw = self._client.smembers(WORKERS_INDEX)
        ids = sorted(r.decode() if isinstance(r, bytes) else str(r) for r in raw)
        others = [i for i in ids if i != self._me]
        if not others:
            self._missing.clear()
            return []
        pipe = self._client.pipeline(transaction=False)
        for worker_id in others:
            pipe.exists(worker_key(worker_id))
        alive = dict(zip(others, pipe.execute(), strict=True))
        reaped = []
        for worker_id in others:
            if alive[worker_id]:
                self._missing.pop(worker_id, None)
                continue
            since = self._missing.setdefault(worker_id, now)
            if now - since >= self._confirm_s and self.reap(worker_id):
                reaped.append(worker_id)
        for gone in set(self._missing) - set(others):
            del self._missing[gone]
        return reaped

    def restore_orphans(self, now: float | None = None) -> list[str]:
        """Give back the unacked messages no registered worker holds; returns their jobs."""
        jobs = self._handback.restore_orphans(ORPHAN_GRACE_S, now)
        if jobs:
            logger.warning(
                "gave back %d unacked message(s) no live worker held: %s",
                len(jobs),
                ", ".join(sorted(jobs)[:10]),
            )
        return jobs

    def reap(self, worker_id: str) -> bool:
        """Fence a dead worker and hand its messages back; False if another reaper has it."""
        lock = f"vq:reaping:{worker_id}"
        if not self._client.set(lock, self._me, nx=True, px=30_000):
            return False
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.set(fence_key(worker_id), self._me, ex=FENCE_TTL_S)
            pipe.delete(worker_key(worker_id))
            pipe.execute()
            jobs = self._handback.restore_held(worker_id)
            pipe = self._client.pipeline(transaction=False)
            pipe.srem(WORKERS_INDEX, worker_id)
            pipe.delete(held_key(worker_id))
            pipe.execute()
        finally:
            self._client.delete(lock)
        self._missing.pop(worker_id, None)
        logger.warning(
            "worker %s stopped beating: handed back %d message(s)%s",
            worker_id,
            len(jobs),
            f" ({', '.join(sorted(jobs)[:10])})" if jobs else "",
        )
        if self._on_reaped is not None:
            self._on_reaped(worker_id, jobs)
        return True
