"""Liveness, readiness and the Prometheus endpoint."""

from __future__ import annotations

from typing import Any

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from services.api.deps import StateDep
from services.api.metrics_server import scrape
from services.api.records import live_workers

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(state: StateDep) -> dict[str, str]:
    """200 while the process lives; ``run_token`` tells ``visionq up`` it started this one."""
    body = {"status": "ok"}
    if state.settings.run_token:
        body["run_token"] = state.settings.run_token
    return body


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
    """Prometheus text format; 404 here when VISIONQ_METRICS_BIND serves it elsewhere."""
    if state.settings.metrics_bind:
        raise HTTPException(404, "metrics are served on VISIONQ_METRICS_BIND, not here")
    return Response(await scrape(state), media_type=CONTENT_TYPE_LATEST)
