"""Prometheus metrics of a worker process (names fixed by the architecture contract)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

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
        self.gpu_util = Gauge(
            "visionq_gpu_utilization_ratio", "NVML utilisation 0..1", ["device"], registry=r
        )
        self.batch_limit = Gauge(
            "visionq_max_batch_size",
            "VISIONQ_MAX_BATCH_SIZE of this worker",
            ["device"],
            registry=r,
        )

    def mark_up(self, device: str) -> None:
        """Publish the series that exist from start-up on, before any job arrives."""
        self.worker_up.labels(device).set(1)
        self.batch_limit.labels(device).set(self.max_batch_size)
        # A counter that exists at 0 lets increase() see the very first OOM.
        self.oom.labels(device)
