"""Worker series: buckets that fit, series present from start-up, GPU gauges only on a GPU."""

from __future__ import annotations

import logging
import sys
import types
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from services.gpu_worker.gpu_stats import GpuSampler, nvml_util_reader, start_gpu_sampler
from services.gpu_worker.metrics import WorkerMetrics, batch_size_buckets


def _fresh(max_batch: int = 16) -> tuple[WorkerMetrics, CollectorRegistry]:
    registry = CollectorRegistry()
    return WorkerMetrics(max_batch, registry), registry


@pytest.mark.parametrize(
    ("limit", "edges"),
    [(1, (1.0,)), (16, (1.0, 2.0, 4.0, 8.0, 16.0)), (12, (1.0, 2.0, 4.0, 8.0, 12.0))],
)
def test_batch_size_buckets_end_at_the_limit(limit: int, edges: tuple[float, ...]) -> None:
    assert batch_size_buckets(limit) == edges


def test_mark_up_publishes_start_up_series_and_no_gpu_ones() -> None:
    metrics, registry = _fresh(24)
    metrics.mark_up("cpu")
    value = registry.get_sample_value
    assert value("visionq_worker_up", {"device": "cpu"}) == 1
    assert value("visionq_max_batch_size", {"device": "cpu"}) == 24
    assert value("visionq_oom_total", {"device": "cpu"}) == 0  # exists before any OOM
    assert b"visionq_gpu_memory_allocated_bytes{" not in generate_latest(registry)


def test_cpu_worker_starts_no_gpu_sampler() -> None:
    metrics, registry = _fresh()
    assert start_gpu_sampler("cpu", metrics) is None
    text = generate_latest(registry)
    assert b"visionq_gpu_utilization_ratio{" not in text
    assert b"visionq_gpu_memory_allocated_bytes{" not in text


def test_sampler_sets_the_gauges_and_survives_a_failing_reader(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics, registry = _fresh()
    memory = iter([1024.0, 2048.0])

    def broken() -> float:
        raise RuntimeError("NVML went away")

    sampler = GpuSampler("cuda:3", metrics, lambda: next(memory), broken)
    with caplog.at_level(logging.WARNING):
        sampler.sample_once()
        sampler.sample_once()
    value = registry.get_sample_value
    assert value("visionq_gpu_memory_allocated_bytes", {"device": "cuda:3"}) == 2048
    # A reader that fails leaves its series absent rather than a made-up number.
    assert value("visionq_gpu_utilization_ratio", {"device": "cuda:3"}) is None
    assert [r.message for r in caplog.records].count(
        "cannot read GPU utilization of cuda:3: NVML went away"
    ) == 1


def test_no_nvidia_ml_py_means_no_utilisation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails as if not installed
    assert nvml_util_reader("abc", 0) is None


class _FakeNvml(types.ModuleType):
    class NVMLError(Exception):
        pass

    def __init__(self) -> None:
        super().__init__("pynvml")
        self.asked: list[Any] = []

    def nvmlInit(self) -> None:  # noqa: N802 (NVML's names)
        pass

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:  # noqa: N802
        self.asked.append(uuid)
        raise self.NVMLError("unknown uuid")

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:  # noqa: N802
        self.asked.append(index)
        return f"handle-{index}"

    def nvmlDeviceGetUtilizationRates(self, handle: str) -> Any:  # noqa: N802
        return types.SimpleNamespace(gpu=37 if handle == "handle-2" else 0)


def test_nvml_finds_the_pinned_gpu_by_uuid_then_physical_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = _FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    read = nvml_util_reader("1234-abcd", 2)
    assert read is not None
    assert read() == pytest.approx(0.37)
    # A MIG instance's CUDA UUID is known to NVML as MIG-<uuid>: tried before giving up.
    assert fake.asked == ["GPU-1234-abcd", "MIG-1234-abcd", 2]


def test_nvml_finds_a_mig_instance_by_its_mig_uuid(monkeypatch: pytest.MonkeyPatch) -> None:
    class MigNvml(_FakeNvml):
        def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:  # noqa: N802
            self.asked.append(uuid)
            if uuid == "MIG-5f1c-77aa":
                return "handle-2"
            raise self.NVMLError("unknown uuid")

    fake = MigNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    read = nvml_util_reader("5f1c-77aa", None)  # pinned by UUID: no physical index
    assert read is not None and read() == pytest.approx(0.37)
    assert fake.asked == ["GPU-5f1c-77aa", "MIG-5f1c-77aa"]


def test_every_series_a_panel_or_alert_reads_exists_at_zero_without_created() -> None:
    metrics, registry = _fresh(8)
    metrics.mark_up("cuda:1", {"m1": "classification", "m2": "detection"})
    value = registry.get_sample_value
    for model, task in (("m1", "classification"), ("m2", "detection")):
        for outcome in ("succeeded", "invalid_image", "inference_error", "out_of_memory"):
            labels = {"model": model, "device": "cuda:1", "outcome": outcome, "task": task}
            assert value("visionq_jobs_completed_total", labels) == 0
        for stage in ("decode", "forward", "store"):
            labels = {"model": model, "device": "cuda:1", "stage": stage}
            assert value("visionq_batch_duration_seconds_count", labels) == 0
        labels = {"model": model, "device": "cuda:1", "task": task}
        assert value("visionq_batch_size_count", labels) == 0
        assert value("visionq_job_latency_seconds_count", {"model": model}) == 0
        assert value("visionq_job_queue_wait_seconds_count", {"model": model}) == 0
    # prometheus-client would add a _created sample per child; the module turns them off.
    assert b"_created" not in generate_latest(registry)
