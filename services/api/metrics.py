"""Prometheus metrics of the API process (names fixed by the architecture contract)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


class ApiMetrics:
    """All series the API exports."""

    def __init__(self) -> None:
        self.requests = Counter(
            "visionq_http_requests_total", "HTTP requests", ["route", "method", "status"]
        )
        self.duration = Histogram(
            "visionq_http_request_duration_seconds",
            "HTTP request time",
            ["route", "method"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.jobs_submitted = Counter("visionq_jobs_submitted_total", "Jobs queued", ["model"])
        self.jobs_rejected = Counter(
            "visionq_jobs_rejected_total", "Jobs refused at submit", ["model", "reason"]
        )
        self.queue_depth = Gauge("visionq_queue_depth", "Jobs waiting in a model queue", ["model"])


API_METRICS = ApiMetrics()


class MetricsMiddleware:
    """Counts requests by route template (never by raw path: ids would explode cardinality)."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            API_METRICS.requests.labels(path, method, str(status)).inc()
            API_METRICS.duration.labels(path, method).observe(time.perf_counter() - start)
