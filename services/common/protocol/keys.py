"""Every Redis key and channel name visionq uses, in one place.

Job state: ``vq:job:<id>`` (hash: status, model, params, created, deadline, lane,
filename, deliveries, worker, started, finished, result, error, timings, stores) and
``vq:img:<id>`` (the image bytes, claim check). ``vq:queued`` indexes jobs waiting for
their first claim. Queues are kombu's lists ``gpu.<model>`` and ``gpu.<model>.bulk``.
"""

from __future__ import annotations

import hashlib

DONE_CHANNEL = "vq:done"  # pub/sub: ids of jobs that just ended
QUEUED_INDEX = "vq:queued"  # zset: job id -> when it was (re)published, until claimed
WORKER_PATTERN = "vq:worker:*"
SWEEPER_LOCK = "vq:sweeper:lock"
RATE_LIMIT_PREFIX = "vq:rl:"

INTERACTIVE = "interactive"
BULK = "bulk"
LANES = (INTERACTIVE, BULK)


def job_key(job_id: str) -> str:
    """Redis key of a job's record."""
    return f"vq:job:{job_id}"


def image_key(job_id: str) -> str:
    """Redis key of a job's image bytes."""
    return f"vq:img:{job_id}"


def worker_key(worker_id: str) -> str:
    """Heartbeat key of a live worker."""
    return f"vq:worker:{worker_id}"


def batch_key(batch_id: str) -> str:
    """Redis key of a batch's settings (hash: model, params, created, cancelled)."""
    return f"vq:batch:{batch_id}"


def batch_members_key(batch_id: str) -> str:
    """Redis key of a batch's job ids, in upload order."""
    return f"vq:batch:{batch_id}:jobs"


def queue_name(model: str, lane: str = INTERACTIVE) -> str:
    """The dedicated queue of a model: a batch never mixes models.

    Bulk jobs (batch uploads of many images) have their own queue per model, so a deep
    backlog of them never sits in front of an interactive request in Redis.
    """
    return f"gpu.{model}" if lane == INTERACTIVE else f"gpu.{model}.{lane}"


def job_pairs(job_ids: list[str]) -> list[str]:
    """``[job_key, image_key]`` per job, flattened: the KEYS tail of every job script."""
    keys: list[str] = []
    for job_id in job_ids:
        keys += [job_key(job_id), image_key(job_id)]
    return keys


def idempotency_key(scope: str, route: str, key: str) -> str:
    """Redis key of an Idempotency-Key's record: per API-key scope and per route path."""
    digest = hashlib.sha256(f"{route}\n{key}".encode()).hexdigest()
    return f"vq:idem:{scope}:{digest}"
