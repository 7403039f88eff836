"""Read job records and live workers from Redis for the API's answers."""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from services.common.jobs import WORKER_PATTERN, JobRecord, job_key


async def fetch_records(client: aioredis.Redis, job_ids: list[str]) -> list[JobRecord | None]:
    """The records of these jobs in one round trip; None where a record is gone."""
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hgetall(job_key(job_id))
    raws = await pipe.execute()
    return [
        JobRecord.from_hash(job_id, raw) if raw else None
        for job_id, raw in zip(job_ids, raws, strict=True)
    ]


async def live_workers(client: aioredis.Redis) -> list[dict[str, Any]]:
    """Heartbeats of the workers alive now (their keys expire when they stop beating)."""
    keys = [key async for key in client.scan_iter(match=WORKER_PATTERN, count=200)]
    if not keys:
        return []
    values = await client.mget(keys)
    workers = []
    for value in values:
        if value:
            try:
                workers.append(json.loads(value))
            except ValueError:
                continue
    return workers


async def fetch_statuses(client: aioredis.Redis, job_ids: list[str]) -> list[str | None]:
    """Only the status of these jobs, in one round trip; None where a record is gone."""
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hget(job_key(job_id), "status")
    raws = await pipe.execute()
    return [raw.decode() if raw else None for raw in raws]
