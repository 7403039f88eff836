"""Liveness, readiness and the Prometheus endpoint."""

from __future__ import annotations

from typing import Any

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.api.deps import StateDep
from services.api.metrics import API_METRICS
from services.api.records import live_workers
from services.common.jobs import queue_name

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """200 while the process lives."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: StateDep) -> JSONResponse:
    """200 when Redis answers and a live worker serves the default model; else 503 why."""
    model = state.settings.default_model
    try:
        await state.redis.ping()
        workers = await live_workers(state.redis)
    except (redis.RedisError, OSError) as exc:
        return _not_ready(f"Redis does not answer: {exc}")
    serving = [w for w in workers if model in w.get("models", [])]
    if not serving:
        return _not_ready(f"no live worker serves the default model {model!r}")
    body: dict[str, Any] = {"status": "ready", "default_model": model, "workers": len(workers)}
    return JSONResponse(body)


def _not_ready(reason: str) -> JSONResponse:
    return JSONResponse({"status": "not_ready", "reason": reason}, status_code=503)


@router.get("/metrics")
async def metrics(state: StateDep) -> Response:
    """Prometheus text format; queue depths are read from Redis now, at scrape time."""
    try:
        pipe = state.redis.pipeline(transaction=False)
        for name in state.settings.models:
            pipe.llen(queue_name(name))
        for name, depth in zip(state.settings.models, await pipe.execute(), strict=True):
            API_METRICS.queue_depth.labels(name).set(int(depth))
    except (redis.RedisError, OSError):
        # Absent beats stale: drop the series while Redis is away.
        API_METRICS.queue_depth.clear()
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
