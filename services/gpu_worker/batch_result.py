"""Turn one forward pass over a prepared batch into per-job outcomes."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from services.common.jobs import Status
from services.gpu_worker.inference import ForwardError, ForwardFn, forward_topk, label_topk
from services.gpu_worker.prepare import Prepared
from services.gpu_worker.store import Outcome


def outcomes_for(
    prepared: Prepared,
    run: ForwardFn,
    labels: Sequence[str],
    on_oom: Callable[[], None],
    stack: Callable[[list[Any]], Any] = np.stack,
) -> tuple[list[Outcome], float]:
    """Run ONE forward for the batch; return an outcome per runnable job and the time."""
    if not prepared.arrays:
        return [], 0.0
    batch = stack(prepared.arrays)
    k = max(claim.top_k for claim in prepared.run_claims)
    start = time.perf_counter()
    tops = forward_topk(run, batch, k, on_oom)
    forward_s = time.perf_counter() - start
    size = len(prepared.arrays)
    outcomes: list[Outcome] = []
    for item, claim, top, decode_ms in zip(
        prepared.run_items, prepared.run_claims, tops, prepared.decode_ms, strict=True
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
        if isinstance(top, ForwardError):
            outcomes.append(
                Outcome(
                    item.job_id,
                    Status.FAILED,
                    error={"code": top.code, "message": top.message},
                    timings=timings,
                )
            )
        else:
            outcomes.append(
                Outcome(
                    item.job_id,
                    Status.SUCCEEDED,
                    result={"top_k": label_topk(top, labels, claim.top_k)},
                    timings=timings,
                )
            )
    return outcomes, forward_s
