"""Turn checked uploads into queued jobs: one pipeline stores them and enqueues their Celery
messages (built in-process by services/api/messages.py), atomically."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import redis

from services.api.idempotency import Idempotency
from services.api.messages import task_message
from services.api.metrics import API_METRICS
from services.api.state import ApiState
from services.api.uploads import SubmitForm, model_not_found
from services.common import tracing
from services.common.errors import PayloadTooLarge, QueueFull, StorageFull
from services.common.jobs import INTERACTIVE, queue_name
from services.common.protocol.scripts import NewJob, submit_jobs

logger = logging.getLogger(__name__)


def check_model(state: ApiState, model: str) -> None:
    """404 unless the model is served here."""
    if model not in state.settings.models:
        raise model_not_found(model, state.settings.models)


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
    carrier: dict[str, str] | None = None,
) -> bytes | None:
    """Write job records and images and enqueue their messages atomically, refusing when
    the queue is too deep or Redis too full; the earlier request's idempotency record when
    ``idem``'s key was used before.
    """
    settings = state.settings
    total = sum(len(upload.data) for upload in form.files)
    if state.queue_max_bytes and total > state.queue_max_bytes:
        # Never fits, however long the client waits: a retryable 429 would be a lie.
        API_METRICS.count_rejected(form.model, PayloadTooLarge.code, len(job_ids))
        raise PayloadTooLarge(
            f"the request's images total {total} bytes, more than the queue's whole "
            f"budget (VISIONQ_QUEUE_MAX_BYTES={state.queue_max_bytes}); send fewer or "
            "smaller files per request"
        )
    now = time.time()
    try:
        reply = await submit_jobs(
            state.redis,
            queue=queue_name(form.model, lane),
            jobs=[
                NewJob(
                    job_id,
                    upload.filename,
                    upload.data,
                    task_message(state.celery, job_id, form.model, lane),
                )
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
            carrier=carrier,
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


async def submit(
    state: ApiState,
    form: SubmitForm,
    job_ids: list[str],
    lane: str = INTERACTIVE,
    idem: Idempotency | None = None,
    **record: str,
) -> dict[str, Any] | None:
    """Store and enqueue on the model's queue for ``lane``, in one atomic step (a Redis that
    is down is 503 ``broker_unavailable`` through the app's handlers; nothing half-done).

    With ``idem``, ``record`` (plus the job ids) is kept under its key; a request whose key
    was used before creates nothing and gets the earlier record back (409 for another body).
    """
    check_model(state, form.model)
    with tracing.enqueue_span(form.model, lane, job_ids) as carrier:
        stored = await store_jobs(
            state,
            form,
            job_ids,
            lane,
            idem,
            idem.record(job_ids, **record) if idem else "",
            carrier=carrier,
        )
        if stored is not None and idem is not None:
            return idem.replay(stored)
    API_METRICS.jobs_submitted.labels(form.model).inc(len(job_ids))
    return None
