"""The FastAPI application: small on purpose; the routes live in services/api/routes."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.routing import APIRoute
from starlette.middleware.cors import CORSMiddleware

from models.handlers import params_class
from models.specs import load_registry
from services.api.deps import document_key_schemes, require_access
from services.api.errors import ErrorShieldMiddleware, install_error_handlers
from services.api.limits import BodyLimitMiddleware
from services.api.metrics import API_METRICS, MetricsMiddleware
from services.api.metrics_server import scrape, start_metrics_server
from services.api.ratelimit import RateLimiter
from services.api.routes import batches, health, jobs, models, submit, ui
from services.api.state import ApiState, check_redis_memory, make_async_redis
from services.api.waiter import ResultWaiter
from services.common import logs, tracing
from services.common.celery_app import make_celery
from services.common.errors import ConfigError
from services.common.settings import ApiSettings, get_api_settings

logger = logging.getLogger(__name__)

_UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})


def _untraced(scope: MutableMapping[str, Any]) -> bool:
    return scope.get("path") in _UNTRACED


class _App(FastAPI):
    """FastAPI whose OpenAPI document declares the API-key schemes on the keyed routes
    (require_access checks keys without FastAPI's security dependencies: see deps)."""

    def __init__(self, **options: Any) -> None:
        # (path, method) of the routes behind the key check, filled as routers are included.
        self.keyed: set[tuple[str, str]] = set()
        super().__init__(**options)

    def openapi(self) -> dict[str, Any]:
        schema = super().openapi()
        document_key_schemes(schema, self.keyed)
        return schema


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """Build the app; settings are read from the environment unless given."""
    settings = settings or get_api_settings()
    # A no-op where the CLI already did it; uvicorn's spawned worker processes start bare.
    logs.configure(settings.log_level, settings.log_format)
    registry = load_registry(settings.models_file)
    unknown = [m for m in settings.models if m not in registry]
    if unknown:
        raise ConfigError(f"VISIONQ_MODELS names unknown model(s): {', '.join(unknown)}")
    for name in settings.models:
        # A custom handler that cannot be imported stops start-up here, not on a request.
        params_class(registry[name])

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = make_async_redis(settings)
        waiter = ResultWaiter(client)
        state = ApiState(settings, client, make_celery(settings), waiter, registry)
        state.queue_max_bytes = settings.queue_max_bytes or 0
        # An evicting Redis stops start-up here; one that is down is checked by /readyz.
        if not await check_redis_memory(state):
            logger.warning("Redis does not answer yet; its eviction policy is checked later")
        app.state.visionq = state
        if settings.rate_limit_per_minute:
            app.state.rate_limiter = RateLimiter(client, settings.rate_limit_per_minute)
        side = None
        if settings.metrics_address is not None:
            host, port = settings.metrics_address
            side = await start_metrics_server(host, port, lambda: scrape(state))
        await waiter.start()
        # The ~90k objects of start-up (modules, pydantic and FastAPI models, Celery) live as
        # long as the app: out of the collector's sight, a full collection (~50 ms here) no
        # longer walks them all. A request allocates thousands of containers that its end
        # frees by reference counting; collecting every 700 (the default) walked them while
        # still alive. The collector took 5.7% of the API's CPU under load; 2.3% after the
        # freeze, and too little to sample with the larger first threshold.
        gc.freeze()
        thresholds = gc.get_threshold()
        gc.set_threshold(10_000, *thresholds[1:])
        try:
            yield
        finally:
            # A process that runs several apps (tests) collects them again, as before.
            gc.set_threshold(*thresholds)
            gc.unfreeze()
            if side is not None:
                side.close()
            await waiter.stop()
            await client.aclose()

    API_METRICS.init_models(settings.models)
    # Off unless OTEL_* ask for it (see services/common/tracing).
    traced = tracing.setup("visionq-api")
    app = _App(
        title="visionq",
        version="0.1.0",
        description="Image inference on GPU queues: upload images, get top-k labels.",
        lifespan=lifespan,
        # Operation ids are the handlers' names (predict, get_job, ...): generated clients
        # then read as the routes do, not as predict_v1_predict_post.
        generate_unique_id_function=lambda route: route.name,
        # FastAPI traces requests itself once a tracer provider is set; probes and scrapes
        # would only bury the jobs' traces. With tracing off its switches are off too: it
        # would otherwise ask OpenTelemetry for its tracer, meter and logger providers on
        # every request (~2% of the API's CPU) only to find that nothing set one.
        telemetry={"exclude": _untraced}
        if traced
        else {"tracing": False, "metrics": False, "logs": False},
    )
    install_error_handlers(app)
    auth = [Depends(require_access)]
    for router in (submit.router, jobs.router, models.router, batches.router):
        app.include_router(router, dependencies=auth)
        app.keyed |= {
            (route.path, method.lower())
            for route in router.routes
            if isinstance(route, APIRoute)
            for method in route.methods or ()
        }
    app.include_router(health.router)
    # The page itself is public; its calls to /v1 carry the key the user types in.
    app.include_router(ui.router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(MetricsMiddleware)
    # Outside the body limit and metrics: nothing that escapes them becomes a plain 500.
    app.add_middleware(ErrorShieldMiddleware)
    if settings.cors_origins:
        # Outermost, so refusals (401, 413, 429) carry the headers a browser needs to read them.
        # Keys travel in headers, never cookies: credentials stay off.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
            expose_headers=["Retry-After"],
            allow_credentials=False,
            max_age=600,
        )
    return app
