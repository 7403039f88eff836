"""Stage one of a batch: claim the jobs in Redis and decode their images (no torch here).

It runs on its own thread so that the next batch is claimed and decoded while the current
one is in the forward pass; PIL releases the GIL while it decodes and resizes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.preprocess import WHITE, Color, decode_and_preprocess
from models.specs import Preprocess
from services.common.errors import VisionqError
from services.common.jobs import Status
from services.gpu_worker.store import Claim, Outcome

logger = logging.getLogger(__name__)


@dataclass
class WorkItem:
    """One delivered message waiting in this worker; its Celery task thread waits on it."""

    job_id: str
    model: str
    received: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
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
    arrays: list[np.ndarray]
    decode_ms: list[float]
    ended: list[tuple[WorkItem, Outcome]]
    claimed_at: float  # wall clock, to compute queue wait
    batch_wait_ms: float
    batch_id: str = ""  # names the batch in logs and traces
    trace: Any = None  # a job_trace.BatchTrace when tracing is on


# Decoders return uint8 (3, S, S): numpy on the CPU path, a CUDA tensor with GPU decode.
DecodeFn = Callable[[bytes], Any]


def make_decoder(
    pre: Preprocess,
    max_pixels: int,
    *,
    background: Color = WHITE,
    formats: Iterable[str] | None = None,
    fast_decode: bool = False,
) -> DecodeFn:
    """The per-image decode (as a viewer shows it) + resize + crop to uint8 for one model."""
    accepted = tuple(formats) if formats is not None else None

    def decode(data: bytes) -> np.ndarray:
        return decode_and_preprocess(
            data,
            pre,
            max_pixels=max_pixels,
            background=background,
            formats=accepted,
            fast_decode=fast_decode,
        )

    return decode


def _timed(decode: DecodeFn, data: bytes) -> tuple[np.ndarray | VisionqError | Exception, float]:
    start = time.perf_counter()
    try:
        value: np.ndarray | VisionqError | Exception = decode(data)
    except Exception as exc:  # one bad image fails only its own job
        value = exc
    return value, (time.perf_counter() - start) * 1000


def decode_all(
    decode: DecodeFn, images: list[bytes], pool: ThreadPoolExecutor | None
) -> list[tuple[np.ndarray | VisionqError | Exception, float]]:
    """Decode every image, each failure kept as its own value."""
    if pool is None or len(images) < 2:
        return [_timed(decode, data) for data in images]
    return list(pool.map(lambda data: _timed(decode, data), images))


def build_prepared(
    model: str,
    items: list[WorkItem],
    claims: list[Claim],
    decode: DecodeFn,
    pool: ThreadPoolExecutor | None,
    claimed_at: float,
) -> tuple[Prepared, list[WorkItem]]:
    """Sort a claimed batch into runnable images, failed decodes, and jobs to just ack."""
    skipped: list[WorkItem] = []
    todo: list[tuple[WorkItem, Claim]] = []
    for item, claim in zip(items, claims, strict=True):
        if claim.verdict == "run":
            todo.append((item, claim))
        else:
            # Already terminal (cancelled, expired, poison, redelivered after success):
            # the claim script stored what there was to store.
            skipped.append(item)
    decoded = decode_all(decode, [c.image for _, c in todo], pool)
    now = time.monotonic()
    prepared = Prepared(
        model=model,
        run_items=[],
        run_claims=[],
        arrays=[],
        decode_ms=[],
        ended=[],
        claimed_at=claimed_at,
        batch_wait_ms=max((now - it.received) * 1000 for it in items),
    )
    for (item, claim), (value, ms) in zip(todo, decoded, strict=True):
        if not isinstance(value, BaseException):  # numpy, or a CUDA tensor (GPU decode)
            prepared.run_items.append(item)
            prepared.run_claims.append(claim)
            prepared.arrays.append(value)
            prepared.decode_ms.append(ms)
            continue
        code = value.code if isinstance(value, VisionqError) else "invalid_image"
        if not isinstance(value, VisionqError):
            logger.warning(
                "decoding job %s failed: %r", item.job_id, value, extra={"job_id": item.job_id}
            )
        message = value.message if isinstance(value, VisionqError) else f"cannot decode: {value}"
        prepared.ended.append(
            (
                item,
                Outcome(
                    item.job_id,
                    Status.FAILED,
                    error={"code": code, "message": message[:300]},
                    timings={"decode_ms": round(ms, 3), "deliveries": claim.deliveries},
                ),
            )
        )
    return prepared, skipped
