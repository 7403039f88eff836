"""Give a worker's messages back to their queues: at its own shutdown, or after its death.

A worker's channel records every delivery tag it holds in ``vq:held:<worker id>``
(broker.py). Handing back moves each held message from kombu's ``unacked`` hash to the
head of its queue, the way kombu's own restore does, but guarded: a tag is moved only if it
is still in ``unacked`` (one Lua call removes and pushes), so a hand-back racing an ack,
kombu's visibility sweep or a second reaper restores each message at most once.

A job the holder had already claimed but not started is "unclaimed" first (back to
``queued``, its delivery not counted), so the next worker claims it as a fresh job.

Defence in depth (``restore_orphans``): an ``unacked`` record that no registered worker's
held set names, fetched more than a few seconds ago, has no holder left to ack it or hand
it back; it goes back to its queue the same way. Recording a delivery and its holder is one
script (broker.py), so a live worker's records are never taken from it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterable
from typing import Any

import redis
from kombu.utils.json import dumps, loads

from services.common.jobs import QUEUED_INDEX, job_key
from services.common.protocol.scripts import script_text

logger = logging.getLogger(__name__)

UNACKED_KEY = "unacked"  # kombu's default unacked_key
UNACKED_INDEX_KEY = "unacked_index"  # and unacked_index_key
WORKERS_INDEX = "vq:workers"  # ids of the workers that may hold messages


def held_key(worker_id: str) -> str:
    """Set of the delivery tags a worker holds."""
    return f"vq:held:{worker_id}"


def fence_key(worker_id: str) -> str:
    """Present once a worker was declared dead: it may neither beat nor store again."""
    return f"vq:fenced:{worker_id}"


_RESTORE_LUA = script_text("handback_restore")

_UNCLAIM_LUA = script_text("handback_unclaim")

_ORPHANS_LUA = script_text("handback_orphans")


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _job_of(message: dict[str, Any]) -> str:
    return str(message.get("headers", {}).get("id", ""))


class HandBack:
    """The two Redis moves of a hand-back, each one atomic."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._restore = client.register_script(_RESTORE_LUA)
        self._unclaim = client.register_script(_UNCLAIM_LUA)
        self._orphans = client.register_script(_ORPHANS_LUA)

    def restore_held(self, worker_id: str, keep_jobs: Collection[str] = ()) -> list[str]:
        """Put the worker's held messages back at the head of their queues.

        Messages of ``keep_jobs`` (the batch still in its forward pass) stay held: their
        worker acks them once stored. Returns the job ids whose message went back.
        """
        key = held_key(worker_id)
        tags = sorted(t.decode() if isinstance(t, bytes) else str(t)
                      for t in self._client.smembers(key))  # fmt: skip
        if not tags:
            return []
        raws = self._client.hmget(UNACKED_KEY, tags)
        queues: list[str] = []
        args: list[str] = []
        jobs: list[str] = []
        gone: list[str] = []
        for tag, raw in zip(tags, raws, strict=True):
            if raw is None:
                gone.append(tag)  # acked meanwhile: only the set entry is left
                continue
            message, _exchange, routing_key = loads(raw)  # type: ignore[no-untyped-call]
            if _job_of(message) in keep_jobs:
                continue
            # As kombu's own restore marks it; our queues are declared with routing key ==
            # queue name (Celery's create_missing_queues), so the routing key is the queue.
            message.setdefault("headers", {})["redelivered"] = True
            message.get("properties", {}).get("delivery_info", {})["redelivered"] = True
            queues.append(str(routing_key))
            args += [tag, dumps(message)]  # type: ignore[no-untyped-call]
            jobs.append(_job_of(message))
        if gone:
            self._client.srem(key, *gone)
        if not queues:
            return []
        self._restore(keys=[UNACKED_KEY, UNACKED_INDEX_KEY, key, *queues], args=args)
        return jobs

    def restore_orphans(self, grace_s: float, now: float | None = None) -> list[str]:
        """Put back unacked messages fetched over ``grace_s`` ago that no worker holds.

        A holder is any worker still in ``vq:workers`` (alive, or dead but not yet reaped:
        the reaper hands those back). Returns the job ids whose message went back.
        """
        cutoff = (time.time() if now is None else now) - grace_s
        found = self._client.zrangebyscore(UNACKED_INDEX_KEY, "-inf", cutoff, 0, 1000)
        raw_tags = [t for t in found if isinstance(t, bytes | str)]
        if not raw_tags:
            return []
        workers = sorted(_text(w) for w in self._client.smembers(WORKERS_INDEX))
        held_keys = [held_key(w) for w in workers]
        pipe = self._client.pipeline(transaction=False)
        for key in held_keys:
            pipe.smembers(key)
        held = {_text(t) for members in pipe.execute() for t in members}
        tags = [_text(t) for t in raw_tags if _text(t) not in held]
        if not tags:
            return []
        queues: list[str] = []
        args: list[str] = []
        jobs: dict[str, str] = {}
        for tag, raw in zip(tags, self._client.hmget(UNACKED_KEY, tags), strict=True):
            if raw is None:
                continue  # acked or handed back since the index was read
            message, _exchange, routing_key = loads(raw)  # type: ignore[no-untyped-call]
            message.setdefault("headers", {})["redelivered"] = True
            message.get("properties", {}).get("delivery_info", {})["redelivered"] = True
            queues.append(str(routing_key))
            args += [tag, dumps(message)]  # type: ignore[no-untyped-call]
            jobs[tag] = _job_of(message)
        if not queues:
            return []
        moved = self._orphans(
            keys=[UNACKED_KEY, UNACKED_INDEX_KEY, *held_keys, *queues],
            args=[cutoff, len(held_keys), *args],
        )
        return [jobs[_text(tag)] for tag in moved]

    def unclaim(self, worker_id: str, job_ids: Iterable[str]) -> int:
        """Return jobs this worker claimed but did not start to ``queued``; how many moved."""
        ids = list(job_ids)
        if not ids:
            return 0
        keys = [QUEUED_INDEX, *(job_key(j) for j in ids)]
        return int(self._unclaim(keys=keys, args=[worker_id, time.time(), *ids]))
