"""Prometheus metrics of a worker process (names fixed by the architecture contract)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

# A `_created` series per counter and histogram child doubles what Prometheus stores and
# no query here uses it (prometheus-client reads this flag when it renders a scrape).
disable_created_metrics()  # type: ignore[no-untyped-call]

# The outcomes a worker ends jobs with: the dashboard and the error-ratio alert read them.
OUTCOMES = (
    "succeeded",
    "invalid_image",
    "inference_error",
    "out_of_memory",
    "expired",
    "worker_lost",
)
STAGES = ("decode", "forward", "store")

_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


def batch_size_buckets(max_batch_size: int) -> tuple[float, ...]:
    """Buckets 1, 2, 4, ... up to the largest batch, so each fill level is visible."""
    edges: list[float] = []
    size = 1
    while size < max_batch_size:
        edges.append(float(size))
        size *= 2
    edges.append(float(max_batch_size))
    return tuple(edges)


class WorkerMetrics:
    """All series one worker exports."""

    def __init__(self, max_batch_size: int, registry: CollectorRegistry = REGISTRY) -> None:
        self.max_batch_size = max_batch_size
        r = registry
        self.batch_size = Histogram(
            "visionq_batch_size",
            "Jobs per forward pass",
            ["model", "device", "task"],
            buckets=batch_size_buckets(max_batch_size),
            registry=r,
        )
        self.batch_duration = Histogram(
            "visionq_batch_duration_seconds",
            "Time per batch stage",
            ["model", "device", "stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "visionq_job_queue_wait_seconds",
            "Submit to start of its batch",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.job_latency = Histogram(
            "visionq_job_latency_seconds",
            "Submit to stored result",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.jobs_completed = Counter(
            "visionq_jobs_completed_total",
            "Jobs ended by this worker",
            ["model", "device", "outcome", "task"],
            registry=r,
        )
        self.oom = Counter(
            "visionq_oom_total", "Out-of-memory errors in a forward", ["device"], registry=r
        )
        self.worker_up = Gauge(
            "visionq_worker_up", "1 while the worker serves", ["device"], registry=r
        )
        self.gpu_memory = Gauge(
            "visionq_gpu_memory_allocated_bytes",
            "torch.cuda.memory_allocated",
            ["device"],
            registry=r,
        )
        self.gpu_memory_reserved = Gauge(
            "visionq_gpu_memory_reserved_bytes",
            "torch.cuda.memory_reserved (allocated plus the caching allocator's free blocks)",
            ["device"],
            registry=r,
        )
        self.gpu_util = Gauge(
            "visionq_gpu_utilization_ratio", "NVML utilisation 0..1", ["device"], registry=r
        )
        self.batch_limit = Gauge(
            "visionq_max_batch_size",
            "VISIONQ_MAX_BATCH_SIZE of this worker",
            ["device"],
            registry=r,
        )

    def mark_up(self, device: str, tasks: Mapping[str, str] | None = None) -> None:
        """Publish the series that exist from start-up on, before any job arrives.

        Every label combination an alert or panel reads exists at 0 from the start, so
        ``increase()`` and ``rate()`` see the very first event (an absent series has no
        "before" to compare with) and a panel shows 0 rather than "no data". ``tasks`` maps
        each served model to its task (the ``task`` label).
        """
        self.worker_up.labels(device).set(1)
        self.batch_limit.labels(device).set(self.max_batch_size)
        self.oom.labels(device)
        for model, task in (tasks or {}).items():
            self.batch_size.labels(model, device, task)
            for stage in STAGES:
                self.batch_duration.labels(model, device, stage)
            self.queue_wait.labels(model)
            self.job_latency.labels(model)
            for outcome in OUTCOMES:
                self.jobs_completed.labels(model, device, outcome, task)
