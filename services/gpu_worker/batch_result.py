"""Turn one forward pass over a prepared batch into per-job outcomes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from services.common.jobs import Status
from services.gpu_worker.inference import ForwardError, ForwardFn, forward_split
from services.gpu_worker.prepare import Prepared
from services.gpu_worker.store import Outcome

logger = logging.getLogger(__name__)

EncodeFn = Callable[[Any, Any], dict[str, Any]]


def _encode(encode: EncodeFn, output: Any, params: Any) -> dict[str, Any] | ForwardError:
    if isinstance(output, ForwardError):
        return output
    try:
        return encode(output, params)
    except Exception as exc:  # a handler's encode failing for one item fails that item only
        logger.warning("encoding a result failed: %r", exc)
        return ForwardError("inference_error", f"encode: {type(exc).__name__}: {exc}"[:500])


def outcomes_for(
    prepared: Prepared,
    run: ForwardFn,
    encode: EncodeFn,
    on_oom: Callable[[], None],
) -> tuple[list[Outcome], float]:
    """Run ONE forward for the batch; return an outcome per runnable job and the time."""
    if not prepared.items:
        return [], 0.0
    start = time.perf_counter()
    outputs = forward_split(run, prepared.items, on_oom)
    forward_s = time.perf_counter() - start
    results = [_encode(encode, o, p) for o, p in zip(outputs, prepared.params, strict=True)]
    size = len(prepared.items)
    outcomes: list[Outcome] = []
    for item, claim, result, decode_ms in zip(
        prepared.run_items, prepared.run_claims, results, prepared.decode_ms, strict=True
    ):
        timings: dict[str, object] = {
            "queued_ms": round((prepared.claimed_at - claim.created) * 1000, 3)
            if claim.created is not None
            else None,
            "batch_wait_ms": round(prepared.batch_wait_ms, 3),
            "batch_size": size,
            "decode_ms": round(decode_ms, 3),
            "inference_ms": round(forward_s * 1000, 3),
            "deliveries": claim.deliveries,
        }
        if claim.created is not None:
            timings["total_ms"] = round((time.time() - claim.created) * 1000, 3)
        if isinstance(result, ForwardError):
            outcomes.append(
                Outcome(
                    item.job_id,
                    Status.FAILED,
                    error={"code": result.code, "message": result.message},
                    timings=timings,
                )
            )
        else:
            outcomes.append(Outcome(item.job_id, Status.SUCCEEDED, result=result, timings=timings))
    return outcomes, forward_s
