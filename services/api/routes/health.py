"""Liveness, readiness and the Prometheus endpoint."""

from __future__ import annotations

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from services.api.deps import StateDep
from services.api.metrics_server import scrape
from services.api.schemas import Health, NotReady, Ready, error_responses
from services.api.state import check_redis_memory
from services.common.errors import ConfigError

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, response_model_exclude_none=True)
async def healthz(state: StateDep) -> dict[str, str]:
    """200 while the process lives; ``run_token`` tells ``visionq up`` it started this one."""
    body = {"status": "ok"}
    if state.settings.run_token:
        body["run_token"] = state.settings.run_token
    return body


# A tiny write with a TTL: a Redis that answers PING but refuses writes (maxmemory reached,
# a read-only replica) cannot queue work, so the API is not ready.
_PROBE_KEY = "vq:readyz:probe"
_PROBE_TTL_MS = 5000


@router.get("/readyz", response_model=Ready, responses={503: {"model": NotReady}})
async def readyz(state: StateDep) -> JSONResponse:
    """200 when Redis answers and accepts writes; else 503 with the reason.

    No live worker is needed: jobs queue while workers scale from zero. Worker availability
    is in GET /v1/models and the visionq_live_workers metric.
    """
    try:
        await check_redis_memory(state)
        await state.redis.set(_PROBE_KEY, b"1", px=_PROBE_TTL_MS)
    except ConfigError as exc:
        return _not_ready(exc.message)
    except redis.exceptions.OutOfMemoryError:
        return _not_ready("Redis refuses writes: it reached its maxmemory (noeviction)")
    except redis.exceptions.ReadOnlyError:
        return _not_ready("Redis refuses writes: it is a read-only replica")
    except (redis.RedisError, OSError) as exc:
        return _not_ready(f"Redis does not answer: {exc}")
    return JSONResponse({"status": "ready", "default_model": state.settings.default_model})


def _not_ready(reason: str) -> JSONResponse:
    return JSONResponse({"status": "not_ready", "reason": reason}, status_code=503)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        **error_responses(404, json_route=False),
    },
)
async def metrics(state: StateDep) -> Response:
    """Prometheus text format; 404 here when VISIONQ_METRICS_BIND serves it elsewhere."""
    if state.settings.metrics_bind:
        raise HTTPException(404, "metrics are served on VISIONQ_METRICS_BIND, not here")
    return Response(await scrape(state), media_type=CONTENT_TYPE_LATEST)
