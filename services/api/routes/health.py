"""Liveness, readiness and the Prometheus endpoint."""

from __future__ import annotations

from typing import Any

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from services.api.deps import StateDep
from services.api.metrics import render_metrics
from services.api.records import live_workers
from services.common.jobs import LANES, queue_name

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
    """Prometheus text format; queue depths and live workers are read from Redis now."""
    models = state.settings.models
    depths: dict[str, int] | None = None
    live: dict[str, int] | None = None
    try:
        pipe = state.redis.pipeline(transaction=False)
        for name in models:
            for lane in LANES:
                pipe.llen(queue_name(name, lane))
        lengths = iter(await pipe.execute())
        # One series per model: the jobs waiting in all of its lanes.
        depths = {n: sum(int(next(lengths)) for _ in LANES) for n in models}
        workers = await live_workers(state.redis)
        live = {n: sum(1 for w in workers if n in w.get("models", [])) for n in models}
    except (redis.RedisError, OSError):
        pass  # absent beats stale: no queue series while Redis is away
    return Response(render_metrics(depths, live), media_type=CONTENT_TYPE_LATEST)
