"""Turn checked uploads into queued jobs: one Lua call stores them, Celery enqueues ids."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import anyio
import redis
from celery import Celery
from kombu.exceptions import OperationalError

from services.api.idempotency import Idempotency
from services.api.metrics import API_METRICS
from services.api.state import ApiState
from services.api.uploads import SubmitForm
from services.common import tracing
from services.common.errors import BrokerUnavailable, ModelNotFound, QueueFull, StorageFull
from services.common.jobs import INTERACTIVE, TASK_NAME, image_key, job_key, queue_name
from services.common.protocol.keys import QUEUED_INDEX
from services.common.protocol.scripts import NewJob, submit_jobs

logger = logging.getLogger(__name__)

_PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


def check_model(state: ApiState, model: str) -> None:
    """404 unless the model is served here."""
    if model not in state.settings.models:
        raise ModelNotFound(
            f"model {model!r} is not served; available: {', '.join(state.settings.models)}"
        )


def new_job_ids(count: int) -> list[str]:
    """Random, unguessable job ids."""
    return [uuid.uuid4().hex for _ in range(count)]


async def store_jobs(
    state: ApiState,
    form: SubmitForm,
    job_ids: list[str],
    lane: str = INTERACTIVE,
    idem: Idempotency | None = None,
    record: str = "",
) -> bytes | None:
    """Write job records and images atomically, refusing when the queue is too deep or Redis
    too full; the earlier request's idempotency record when ``idem``'s key was used before.
    """
    settings = state.settings
    now = time.time()
    try:
        reply = await submit_jobs(
            state.redis,
            queue=queue_name(form.model, lane),
            jobs=[
                NewJob(job_id, upload.filename, upload.data)
                for job_id, upload in zip(job_ids, form.files, strict=True)
            ],
            max_depth=settings.queue_max_depth,
            job_ttl_s=settings.job_ttl_s,
            model=form.model,
            created=now,
            params_json=form.params_json,
            deadline=None if form.timeout is None else now + form.timeout,
            lane=lane,
            max_bytes=state.queue_max_bytes,
            idempotency=(idem.redis_key, record) if idem is not None else None,
        )
    except redis.exceptions.OutOfMemoryError as exc:
        raise _storage_full(state, form.model, len(job_ids)) from exc
    if isinstance(reply, bytes):
        return reply
    if reply < 0:
        API_METRICS.count_rejected(form.model, QueueFull.code, len(job_ids))
    if reply == -1:
        raise QueueFull(
            f"queue {queue_name(form.model, lane)} holds VISIONQ_QUEUE_MAX_DEPTH="
            f"{settings.queue_max_depth} jobs or more; retry later",
            retry_after_s=settings.retry_after_s,
        )
    if reply == -2:
        raise QueueFull(
            f"Redis holds VISIONQ_QUEUE_MAX_BYTES={state.queue_max_bytes} bytes or more "
            "(queued images and records); retry later",
            retry_after_s=settings.retry_after_s,
        )
    return None


def _storage_full(state: ApiState, model: str, count: int) -> StorageFull:
    API_METRICS.count_rejected(model, StorageFull.code, count)
    return StorageFull(
        "Redis refused the write: it reached its maxmemory; retry later",
        retry_after_s=state.settings.retry_after_s,
    )


def _publish(celery: Celery, model: str, job_ids: list[str], lane: str) -> None:
    queue = queue_name(model, lane)
    with celery.producer_or_acquire() as producer:
        for job_id in job_ids:
            celery.send_task(
                TASK_NAME,
                args=[job_id, model, lane],
                queue=queue,
                task_id=job_id,
                producer=producer,
                retry=True,
                retry_policy=_PUBLISH_RETRY,
            )


async def submit(
    state: ApiState,
    form: SubmitForm,
    job_ids: list[str],
    lane: str = INTERACTIVE,
    idem: Idempotency | None = None,
    **record: str,
) -> dict[str, Any] | None:
    """Store then enqueue on the model's queue for ``lane``; unsent jobs are removed.

    With ``idem``, ``record`` (plus the job ids) is kept under its key; a request whose key
    was used before creates nothing and gets the earlier record back (409 for another body).
    """
    check_model(state, form.model)
    with tracing.enqueue_span(form.model, lane, job_ids) as carrier:
        stored = await store_jobs(
            state, form, job_ids, lane, idem, idem.record(job_ids, **record) if idem else ""
        )
        if stored is not None and idem is not None:
            return idem.replay(stored)
        try:
            if carrier:
                await _store_carrier(state, job_ids, carrier)
            # kombu publishes with blocking sockets: keep it off the event loop.
            await anyio.to_thread.run_sync(_publish, state.celery, form.model, job_ids, lane)
        except (OperationalError, redis.RedisError, OSError) as exc:
            # Not accepted: remove the jobs, or the sweeper would publish them later.
            await _fail_unsent(state, job_ids, idem)
            if _out_of_memory(exc):
                raise _storage_full(state, form.model, len(job_ids)) from exc
            raise BrokerUnavailable(f"could not enqueue the jobs: {exc}") from exc
    API_METRICS.jobs_submitted.labels(form.model).inc(len(job_ids))
    return None


def _out_of_memory(exc: BaseException | None) -> bool:
    # kombu may wrap redis-py's error; look through the chain.
    while exc is not None:
        if isinstance(exc, redis.exceptions.OutOfMemoryError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


async def _store_carrier(state: ApiState, job_ids: list[str], carrier: dict[str, str]) -> None:
    # Tracing only: the trace context goes into each job record before its message is
    # published, so the worker that claims the job continues this trace.
    pipe = state.redis.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hset(job_key(job_id), mapping=dict(carrier.items()))
    await pipe.execute()


async def _fail_unsent(state: ApiState, job_ids: list[str], idem: Idempotency | None) -> None:
    try:
        pipe = state.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.delete(job_key(job_id), image_key(job_id))
        pipe.zrem(QUEUED_INDEX, *job_ids)
        if idem is not None:
            pipe.delete(idem.redis_key)  # a retry with the key must be able to try again
        await pipe.execute()
    except redis.RedisError:
        logger.warning("could not clean up %d unsent jobs; they expire by TTL", len(job_ids))
