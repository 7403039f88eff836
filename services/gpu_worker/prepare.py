"""Stage one of a batch: claim the jobs in Redis and decode their images (no torch here).

Each job's params (JSON in its record) are parsed with the handler's ``Params`` here, and
the handler's ``decode(data, params)`` runs on the decode threads.

It runs on its own thread so that the next batch is claimed and decoded while the current
one is in the forward pass; PIL releases the GIL while it decodes and resizes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from services.common.errors import VisionqError
from services.common.jobs import Status
from services.gpu_worker.cuda_errors import exit_on_device_fault, is_oom
from services.gpu_worker.store import Claim, Outcome

logger = logging.getLogger(__name__)


@dataclass
class WorkItem:
    """One delivered message waiting in this worker; its Celery task thread waits on it."""

    job_id: str
    model: str
    received: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    delivery_tag: str = ""  # its message's kombu tag: acked with the result (acks.py)
    requeue: bool = False  # set when the worker gives the message back unprocessed
    outcome: Outcome | None = None  # what was stored, when this worker ran the job

    def release(self, requeue: bool = False, outcome: Outcome | None = None) -> None:
        """Let the task thread return (ack) or give the message back (requeue)."""
        self.requeue = requeue
        self.outcome = outcome
        self.done.set()


@dataclass
class Prepared:
    """A batch ready for the forward pass, plus the jobs that already ended."""

    model: str
    run_items: list[WorkItem]
    run_claims: list[Claim]
    items: list[Any]  # the handler's decoded items, one per runnable job
    params: list[Any]  # the handler's Params, one per runnable job
    decode_ms: list[float]
    ended: list[tuple[WorkItem, Outcome]]
    claimed_at: float  # wall clock, to compute queue wait
    batch_wait_ms: float
    batch_id: str = ""  # names the batch in logs and traces
    trace: Any = None  # a job_trace.BatchTrace when tracing is on


# The handler's decode(data, params) -> item, possibly wrapped by the runtime.
DecodeFn = Callable[[bytes, Any], Any]


class _Failed:
    """A decode that raised; kept in place of the item."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc


def _timed(decode: DecodeFn, data: bytes, params: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    try:
        value: Any = decode(data, params)
    except Exception as exc:  # one bad image fails only its own job
        value = _Failed(exc)
    return value, (time.perf_counter() - start) * 1000


def decode_all(
    decode: DecodeFn,
    images: list[bytes],
    params: list[Any],
    pool: ThreadPoolExecutor | None,
) -> list[tuple[Any, float]]:
    """Decode every image; a failure is kept as a ``_Failed`` in its place."""
    if pool is None or len(images) < 2:
        return [_timed(decode, data, p) for data, p in zip(images, params, strict=True)]
    return list(pool.map(lambda pair: _timed(decode, *pair), zip(images, params, strict=True)))


def parse_params(params_type: type[BaseModel], raw: str) -> BaseModel:
    """A job's params from its record (the API validated them; '' means the defaults)."""
    return params_type.model_validate_json(raw or "{}")


def _failure(item: WorkItem, claim: Claim, code: str, message: str, ms: float) -> Outcome:
    return Outcome(
        item.job_id,
        Status.FAILED,
        error={"code": code, "message": message[:300]},
        timings={"decode_ms": round(ms, 3), "deliveries": claim.deliveries},
    )


def build_prepared(
    model: str,
    items: list[WorkItem],
    claims: list[Claim],
    decode: DecodeFn,
    params_type: type[BaseModel],
    pool: ThreadPoolExecutor | None,
    claimed_at: float,
) -> tuple[Prepared, list[WorkItem]]:
    """Sort a claimed batch into runnable items, failed ones, and jobs to just ack."""
    now = time.monotonic()
    prepared = Prepared(
        model=model,
        run_items=[],
        run_claims=[],
        items=[],
        params=[],
        decode_ms=[],
        ended=[],
        claimed_at=claimed_at,
        batch_wait_ms=max((now - it.received) * 1000 for it in items),
    )
    skipped: list[WorkItem] = []
    todo: list[tuple[WorkItem, Claim, BaseModel]] = []
    for item, claim in zip(items, claims, strict=True):
        if claim.verdict == "image_missing":
            # Claimed (running, ours) but its bytes vanished right after: end it here.
            message = "the image bytes expired before a worker reached the job"
            prepared.ended.append((item, _failure(item, claim, "image_missing", message, 0)))
            continue
        if claim.verdict != "run":
            # Already terminal (cancelled, expired, poison, redelivered after success):
            # the claim script stored what there was to store.
            skipped.append(item)
            continue
        try:
            todo.append((item, claim, parse_params(params_type, claim.params)))
        except ValidationError as exc:
            # The API validated them: only a record written by another version gets here.
            message = f"stored params do not fit this model: {exc}"
            prepared.ended.append((item, _failure(item, claim, "validation_error", message, 0)))
    decoded = decode_all(decode, [c.image for _, c, _ in todo], [p for *_, p in todo], pool)
    for (item, claim, params), (value, ms) in zip(todo, decoded, strict=True):
        if not isinstance(value, _Failed):
            prepared.run_items.append(item)
            prepared.run_claims.append(claim)
            prepared.items.append(value)
            prepared.params.append(params)
            prepared.decode_ms.append(ms)
            continue
        error = value.exc
        # GPU decode: a sticky CUDA error ends the worker (its jobs are redelivered); an OOM
        # while resizing on the device is the server's fault, not a bad image.
        exit_on_device_fault(error, "GPU decode")
        if isinstance(error, VisionqError):
            outcome = _failure(item, claim, error.code, error.message, ms)
        else:
            logger.warning(
                "decoding job %s failed: %r", item.job_id, error, extra={"job_id": item.job_id}
            )
            code = "out_of_memory" if is_oom(error) else "invalid_image"
            outcome = _failure(item, claim, code, f"cannot decode: {error}", ms)
        prepared.ended.append((item, outcome))
    return prepared, skipped
