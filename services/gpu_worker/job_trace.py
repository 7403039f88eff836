"""A batch's spans in the worker: recorded once the batch is stored, from measured times.

Per job: ``visionq.job`` (child of the API's ``visionq.enqueue``, whose context the job
record carries) from the claim to the stored result, with children ``visionq.claim``,
``visionq.decode`` and ``visionq.store``. Per batch: ONE ``visionq.forward`` span with the
batch's size, model and device, linked from every job span that took part in it (and
linking back to each job's enqueue context, as OpenTelemetry's messaging conventions do for
a batch). Spans are written after the fact with explicit start and end times, so no trace
context has to cross the prepare and inference threads.

Off (no ``OTEL_*`` asking for traces), ``begin`` returns None before touching Redis and the
runtime skips the rest: no OpenTelemetry import, no extra round trip.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from services.common import tracing
from services.common.jobs import job_key
from services.gpu_worker.prepare import Prepared
from services.gpu_worker.store import Outcome

logger = logging.getLogger(__name__)


@dataclass
class BatchTrace:
    """What the prepare thread measured, carried with the batch to the inference thread."""

    model: str
    batch_id: str
    carriers: dict[str, dict[str, str]]  # job id -> its record's trace context
    claim_ns: tuple[int, int]
    decode_start_ns: int


def begin(
    client: redis.Redis,
    model: str,
    batch_id: str,
    job_ids: Sequence[str],
    claim_ns: tuple[int, int],
    decode_start_ns: int,
) -> BatchTrace | None:
    """Read the jobs' trace contexts (one round trip); None when tracing is off."""
    if not tracing.enabled():
        return None
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hmget(job_key(job_id), list(tracing.CARRIER_FIELDS))
    carriers = {}
    for job_id, values in zip(job_ids, pipe.execute(), strict=True):
        carriers[job_id] = {
            k: v.decode() for k, v in zip(tracing.CARRIER_FIELDS, values, strict=True) if v
        }
    return BatchTrace(model, batch_id, carriers, claim_ns, decode_start_ns)


def finish(
    prepared: Prepared, outcomes: Sequence[Outcome], forward_ns: tuple[int, int], device: str
) -> None:
    """Write the batch's spans, once its results are stored (the store ends now).

    A failure here is logged, never raised: tracing must not take the inference loop down.
    """
    trace = prepared.trace
    if not isinstance(trace, BatchTrace):
        return
    # The jobs that were in the forward pass (failed decodes were not).
    forwarded = [item.job_id for item in prepared.run_items]
    try:
        _finish(trace, outcomes, forwarded, forward_ns, (forward_ns[1], now_ns()), device)
    except Exception:
        logger.exception("recording the spans of batch %s failed", trace.batch_id)


def _finish(
    trace: BatchTrace,
    outcomes: Sequence[Outcome],
    forwarded: Sequence[str],
    forward_ns: tuple[int, int],
    store_ns: tuple[int, int],
    device: str,
) -> None:
    from opentelemetry import trace as otel
    from opentelemetry.context import Context
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode

    tracer = tracing.tracer()
    if tracer is None:
        return
    batch_link = None
    if forwarded:
        parents = [
            otel.get_current_span(tracing.extract(trace.carriers.get(j, {}))) for j in forwarded
        ]
        batch = tracer.start_span(
            "visionq.forward",
            context=Context(),  # its own trace: it belongs to every job in it, not one
            kind=SpanKind.INTERNAL,
            links=[Link(p.get_span_context()) for p in parents if p.get_span_context().is_valid],
            start_time=forward_ns[0],
            attributes={
                "visionq.batch_id": trace.batch_id,
                "visionq.model": trace.model,
                "visionq.device": device,
                "visionq.batch_size": len(forwarded),
                "visionq.job_ids": list(forwarded),
            },
        )
        batch.end(end_time=forward_ns[1])
        batch_link = Link(batch.get_span_context(), {"visionq.batch_id": trace.batch_id})
    in_batch = set(forwarded)
    for out in outcomes:
        parent = tracing.extract(trace.carriers.get(out.job_id, {}))
        links = [batch_link] if batch_link is not None and out.job_id in in_batch else []
        outcome = out.status.value if out.error is None else out.error.get("code", "failed")
        job = tracer.start_span(
            "visionq.job",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=links,
            start_time=trace.claim_ns[0],
            attributes={
                "visionq.job_id": out.job_id,
                "visionq.model": trace.model,
                "visionq.batch_id": trace.batch_id,
                "visionq.device": device,
                "visionq.outcome": outcome,
            },
        )
        inside = otel.set_span_in_context(job)
        _child(tracer, "visionq.claim", inside, *trace.claim_ns)
        decode_ms = _decode_ms(out)
        if decode_ms is not None:
            start = trace.decode_start_ns
            _child(tracer, "visionq.decode", inside, start, start + int(decode_ms * 1e6))
        _child(tracer, "visionq.store", inside, *store_ns)
        if out.error is not None:
            job.set_status(Status(StatusCode.ERROR, out.error.get("message", "")[:200]))
        job.end(end_time=store_ns[1])


def _decode_ms(out: Outcome) -> float | None:
    value = (out.timings or {}).get("decode_ms")
    return float(value) if isinstance(value, int | float) else None


def _child(tracer: Any, name: str, context: Any, start_ns: int, end_ns: int) -> None:
    span = tracer.start_span(name, context=context, start_time=start_ns)
    span.end(end_time=max(start_ns, end_ns))


def now_ns() -> int:
    """Wall-clock nanoseconds, the time base of span timestamps."""
    return time.time_ns()
