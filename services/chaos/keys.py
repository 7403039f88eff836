"""Reading the cluster's Redis for a chaos run: who holds what, and what was left behind."""

from __future__ import annotations

import json
import logging
from typing import Any

import redis
from kombu.utils.json import loads

from services.common.jobs import QUEUED_INDEX, TERMINAL
from services.gpu_worker.handback import UNACKED_KEY, WORKERS_INDEX, held_key

logger = logging.getLogger(__name__)

TERMINAL_NAMES = frozenset(s.value for s in TERMINAL)


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def worker_holdings(client: redis.Redis, pid: int) -> list[str]:
    """Job ids of the messages the worker process ``pid`` holds (claimed or buffered)."""
    for key in client.scan_iter("vq:worker:*", count=200):
        raw = client.get(key)
        info: dict[str, Any] = json.loads(raw) if raw else {}
        if info.get("pid") != pid:
            continue
        tags = [_text(t) for t in client.smembers(held_key(str(info["worker_id"])))]
        payloads = client.hmget(UNACKED_KEY, tags) if tags else []
        jobs = []
        for payload in payloads:
            if payload:
                message = loads(payload)[0]  # type: ignore[no-untyped-call]
                jobs.append(str(message["headers"]["id"]))
        return jobs
    return []


def leftover_keys(client: redis.Redis) -> dict[str, int]:
    """What should not be there once every job ended: counts by kind (all 0 when clean)."""
    live = {_text(k)[len("vq:worker:") :] for k in client.scan_iter("vq:worker:*", count=200)}
    found = {
        "image_keys": 0,
        "records_without_ttl": 0,
        "unended_records": 0,
        "queue_messages": 0,
        "queued_index": int(client.zcard(QUEUED_INDEX)),
        "unacked": int(client.hlen(UNACKED_KEY)),
        "gone_workers": 0,
        "other_keys_without_ttl": 0,
    }
    examples: list[str] = []
    for raw in client.scan_iter(count=1000):
        key = _text(raw)
        kind = ""
        if key.startswith("vq:img:"):
            kind = "image_keys"
        elif key.startswith("vq:job:"):
            status = _text(client.hget(key, "status") or b"")
            if status not in TERMINAL_NAMES:
                kind = "unended_records"
            elif client.ttl(key) == -1:
                kind = "records_without_ttl"
        elif key.startswith("gpu."):
            found["queue_messages"] += int(client.llen(key))
        elif key.startswith("vq:held:") and key[len("vq:held:") :] not in live:
            kind = "gone_workers"
        elif client.ttl(key) == -1 and not key.startswith(("_kombu.", "vq:held:")) and \
                key not in (WORKERS_INDEX, UNACKED_KEY, "unacked_index", QUEUED_INDEX):  # fmt: skip
            kind = "other_keys_without_ttl"
        if kind:
            found[kind] += 1
            examples.append(key)
    gone = [w for w in map(_text, client.smembers(WORKERS_INDEX)) if w not in live]
    found["gone_workers"] += len(gone)
    if examples or gone:
        logger.warning("left behind: %s", ", ".join((examples + gone)[:10]))
    return found
