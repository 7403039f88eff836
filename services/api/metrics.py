"""Prometheus metrics of the API process (names fixed by the architecture contract).

Several uvicorn worker processes may serve one API: ``visionq api --workers N`` sets
``PROMETHEUS_MULTIPROC_DIR`` (wiped first) and every scrape merges the counters and
histograms of all processes. The API keeps no process-local gauges: queue depth and live
workers are read from Redis at scrape time by whichever process answers, so no gauge
multiprocess mode is needed and no process can report a stale value.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# No `_created` series: no query uses them and they double the stored series.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Why a submit was refused (the `reason` label): the error code of the answer.
REJECT_REASONS = (
    "queue_full",
    "storage_full",
    "invalid_image",
    "payload_too_large",
    "unsupported_media_type",
)

# From a cached GET (about 1 ms) to a /v1/predict that waits for a slow batch (60 s).
_HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ApiMetrics:
    """The counters and histograms the API keeps (gauges come from Redis per scrape)."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self.requests = Counter(
            "visionq_http_requests_total",
            "HTTP requests",
            ["route", "method", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "visionq_http_request_duration_seconds",
            "HTTP request time",
            ["route", "method"],
            buckets=_HTTP_BUCKETS,
            registry=registry,
        )
        self.jobs_submitted = Counter(
            "visionq_jobs_submitted_total", "Jobs queued", ["model"], registry=registry
        )
        self.jobs_rejected = Counter(
            "visionq_jobs_rejected_total",
            "Jobs refused at submit",
            ["model", "reason"],
            registry=registry,
        )

    def init_models(self, models: Iterable[str]) -> None:
        """Create every series a panel or alert reads at 0, before the first request."""
        for model in models:
            self.jobs_submitted.labels(model)
            for reason in REJECT_REASONS:
                self.jobs_rejected.labels(model, reason)

    def count_rejected(self, model: str, code: str, jobs: int = 1) -> None:
        """Count refused jobs by error code; codes outside ``REJECT_REASONS`` are not.

        ``model`` is empty when the body was refused before its model field was read.
        """
        if code in REJECT_REASONS:
            self.jobs_rejected.labels(model, code).inc(jobs)


API_METRICS = ApiMetrics()


class ScrapeGauges(Collector):
    """Gauges read from Redis for this one scrape; absent (not zero) when Redis is away."""

    def __init__(self, depths: Mapping[str, int] | None, live: Mapping[str, int] | None) -> None:
        self.depths = depths
        self.live = live

    def collect(self) -> Iterator[Metric]:
        """Yield visionq_queue_depth{model} and visionq_live_workers{model}."""
        if self.depths is not None:
            depth = GaugeMetricFamily(
                "visionq_queue_depth", "Jobs waiting in a model queue", labels=["model"]
            )
            for model, value in sorted(self.depths.items()):
                depth.add_metric([model], float(value))
            yield depth
        if self.live is not None:
            live = GaugeMetricFamily(
                "visionq_live_workers",
                "Workers whose heartbeat says they serve the model",
                labels=["model"],
            )
            for model, value in sorted(self.live.items()):
                live.add_metric([model], float(value))
            yield live


def render_metrics(
    depths: Mapping[str, int] | None,
    live: Mapping[str, int] | None,
    multiproc_dir: str | None = None,
) -> bytes:
    """The exposition text: this process (or all API processes) plus the scrape-time gauges."""
    path = multiproc_dir if multiproc_dir is not None else os.environ.get(MULTIPROC_ENV)
    if path:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    else:
        registry = REGISTRY
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(ScrapeGauges(depths, live))
    return generate_latest(registry) + generate_latest(scrape)


class MetricsMiddleware:
    """Counts requests by route template (never by raw path: ids would explode cardinality)."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app
        # (route, method, status) -> its counter and histogram series: ``labels()`` takes a
        # lock and builds the key on every call; these few dozen series never change.
        self._series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

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
            key = (path, scope.get("method", ""), status)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = (
                    API_METRICS.requests.labels(path, key[1], str(status)),
                    API_METRICS.duration.labels(path, key[1]),
                )
            series[0].inc()
            series[1].observe(time.perf_counter() - start)
