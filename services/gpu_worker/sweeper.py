"""Find jobs whose Celery message was lost, and publish it again.

kombu's Redis transport pops a message (BRPOP) and only then records it in its ``unacked``
hash; a worker (or Redis) that dies between the two loses the message, and the job would
sit ``queued`` until its TTL. Every job waiting for its first claim is in ``vq:queued``.
Every interval one worker (a Redis lock elects it; the holder keeps it from one run to
the next) looks at the jobs that have waited longer than the grace: any whose message is
neither in its queue nor in ``unacked`` — twice, a second apart, so a message in flight is
not mistaken for a lost one — is published again. Only a dying consumer loses a message in
that window, so after the reaper (reaper.py) declares a worker dead it asks for a prompt
pass over every queued job (``sweep_soon``). A duplicate message could only make a job
run twice, and store.py stores one result per job.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

import redis
from celery import Celery

from services.common.jobs import QUEUED_INDEX, TASK_NAME, job_key, queue_name
from services.common.protocol.keys import SWEEPER_LOCK
from services.common.protocol.scripts import script_text

logger = logging.getLogger(__name__)

LOCK_KEY = SWEEPER_LOCK
UNACKED_KEY = "unacked"  # kombu's default unacked_key
PROMPT_GRACE_S = 2.0  # a prompt pass skips jobs a producer may still be publishing

_LOCK_LUA = script_text("sweeper_lock")


def _message_ids(raws: Iterable[bytes | str], nested: bool) -> set[str]:
    ids = set()
    for raw in raws:
        try:
            payload: Any = json.loads(raw)
            message = payload[0] if nested else payload
            ids.add(str(message["headers"]["id"]))
        except (ValueError, KeyError, IndexError, TypeError):
            continue
    return ids


class LostMessageSweeper:
    """Republishes the messages of jobs that are queued but nowhere in the broker."""

    def __init__(
        self, client: redis.Redis, app: Celery, grace_s: float, interval_s: float, owner: str
    ) -> None:
        self._client = client
        self._app = app
        self._grace_s = grace_s
        self._interval_s = interval_s
        self._owner = owner
        self._lock = client.register_script(_LOCK_LUA)
        self._soon = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vq-sweeper", daemon=True)

    def start(self) -> None:
        """Sweep in the background until stopped."""
        self._thread.start()

    def stop(self) -> None:
        """Stop sweeping."""
        self._stop.set()
        self._soon.set()
        self._thread.join(self._interval_s + 5)

    def sweep_soon(self) -> None:
        """Ask for a prompt pass over every queued job (a consumer just died)."""
        self._soon.set()

    def _loop(self) -> None:
        while True:
            self._soon.wait(self._interval_s)
            if self._stop.is_set():
                return
            prompt = self._soon.is_set()
            self._soon.clear()
            try:
                self.sweep(prompt=prompt)
            except (redis.RedisError, OSError) as exc:
                logger.debug("sweep skipped: %s", exc)

    def _lost(self, candidates: list[str]) -> dict[str, tuple[str, str]]:
        """Candidates still queued whose message is in no queue list and not unacked."""
        pipe = self._client.pipeline(transaction=False)
        for job_id in candidates:
            pipe.hmget(job_key(job_id), "status", "model", "lane")
        queued: dict[str, tuple[str, str]] = {}
        gone = []
        for job_id, (status, model, lane) in zip(candidates, pipe.execute(), strict=True):
            if status == b"queued" and model:
                queued[job_id] = (model.decode(), (lane or b"interactive").decode())
            else:
                gone.append(job_id)  # claimed, ended, or expired: no longer ours to watch
        if gone:
            self._client.zrem(QUEUED_INDEX, *gone)
        present: set[str] = set()
        for queue in {queue_name(m, lane) for m, lane in queued.values()}:
            present |= _message_ids(self._client.lrange(queue, 0, -1), nested=False)
        present |= _message_ids(self._client.hvals(UNACKED_KEY), nested=True)
        return {j: v for j, v in queued.items() if j not in present}

    def sweep(self, now: float | None = None, prompt: bool = False) -> list[str]:
        """One pass; returns the ids whose message was published again.

        A prompt pass skips the lock (the holder may be the worker that just died) and
        looks at every job queued more than ``PROMPT_GRACE_S`` ago.
        """
        lock_ms = max(int(self._interval_s * 3000), 1000)  # another takes over after 3 runs
        if not prompt and not self._lock(keys=[LOCK_KEY], args=[self._owner, lock_ms]):
            return []
        now = time.time() if now is None else now
        grace = PROMPT_GRACE_S if prompt else self._grace_s
        raw = self._client.zrangebyscore(QUEUED_INDEX, "-inf", now - grace, 0, 500)
        candidates = [r.decode() if isinstance(r, bytes) else str(r) for r in raw]
        if not candidates:
            return []
        first = self._lost(candidates)
        if not first:
            return []
        time.sleep(1.0)  # a message between BRPOP and the unacked hash is not lost
        lost = {j: v for j, v in self._lost(list(first)).items() if j in first}
        for job_id, (model, lane) in lost.items():
            self._app.send_task(TASK_NAME, args=[job_id, model, lane],
                                queue=queue_name(model, lane), task_id=job_id)  # fmt: skip
            self._client.zadd(QUEUED_INDEX, {job_id: time.time()}, xx=True)
        if lost:
            logger.warning("republished %d job(s) whose message was lost: %s",
                           len(lost), ", ".join(sorted(lost)[:10]))  # fmt: skip
        return sorted(lost)
