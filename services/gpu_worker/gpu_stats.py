"""GPU memory (torch) and utilisation (NVML) of a CUDA worker, sampled by a small thread.

Only a worker that runs on CUDA starts a sampler, so on the CPU these series never exist:
absent, not fake zeros. ``nvidia-ml-py`` is optional (the ``gpu`` extra): without it, or
without a driver NVML can talk to, only memory is reported.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import Gauge

from services.gpu_worker.metrics import WorkerMetrics

logger = logging.getLogger(__name__)

Reader = Callable[[], float]


class GpuSampler:
    """Every ``interval_s``, set the GPU gauges of one device from the readers given."""

    def __init__(
        self,
        device: str,
        metrics: WorkerMetrics,
        read_memory: Reader,
        read_util: Reader | None,
        interval_s: float = 2.0,
        read_reserved: Reader | None = None,
    ) -> None:
        self.device = device
        self.metrics = metrics
        self.read_memory = read_memory
        self.read_util = read_util
        self.read_reserved = read_reserved
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed: set[str] = set()

    def sample_once(self) -> None:
        """Read both values; a reader that fails leaves its series unset (and says so once)."""
        self._sample("memory", self.read_memory, self.metrics.gpu_memory)
        if self.read_reserved is not None:
            self._sample("reserved memory", self.read_reserved, self.metrics.gpu_memory_reserved)
        if self.read_util is not None:
            self._sample("utilization", self.read_util, self.metrics.gpu_util)

    def _sample(self, what: str, read: Reader, gauge: Gauge) -> None:
        try:
            value = read()
        except Exception as exc:  # a driver hiccup must not kill the worker's sampler
            if what not in self._failed:
                logger.warning("cannot read GPU %s of %s: %s", what, self.device, exc)
                self._failed.add(what)
            return
        # Labelled only now: .labels() alone would publish a 0 that was never read.
        gauge.labels(self.device).set(value)

    def start(self) -> GpuSampler:
        """Sample now, then in a daemon thread until stop()."""
        self.sample_once()
        self._thread = threading.Thread(target=self._loop, name="gpu-stats", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample_once()

    def stop(self) -> None:
        """End the thread (it is a daemon, so a worker that exits never waits long)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 1)


def nvml_util_reader(torch_uuid: str, physical_index: int | None) -> Reader | None:
    """A reader of NVML utilisation (0..1) for this GPU, or None where NVML is unusable."""
    try:
        import pynvml
    except ImportError:
        logger.info("nvidia-ml-py not installed: no visionq_gpu_utilization_ratio")
        return None
    try:
        pynvml.nvmlInit()
        handle = _nvml_handle(pynvml, torch_uuid, physical_index)
    except pynvml.NVMLError as exc:
        logger.warning("NVML unavailable (%s): no visionq_gpu_utilization_ratio", exc)
        return None

    def read() -> float:
        return float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu) / 100.0

    return read


def nvml_uuid_candidates(torch_uuid: str, visible: str | None) -> list[str]:
    """UUIDs to try with ``nvmlDeviceGetHandleByUUID`` for the worker's one GPU, best first.

    NVML ignores CUDA_VISIBLE_DEVICES and numbers every GPU on the host, so the pinned GPU is
    found by UUID. torch prints the CUDA UUID without NVML's prefix, and for a MIG instance
    that UUID is the instance's, which NVML knows as ``MIG-<uuid>``, not ``GPU-<uuid>``. A
    ``CUDA_VISIBLE_DEVICES`` naming one UUID (the supervisor's or the device plugin's pin)
    is the exact name and comes first.
    """
    out: list[str] = []
    one = (visible or "").strip()
    if one and "," not in one and one.startswith(("GPU-", "MIG-")):
        out.append(one)
    if torch_uuid.startswith(("GPU-", "MIG-")):
        out.append(torch_uuid)
    else:
        out += [f"GPU-{torch_uuid}", f"MIG-{torch_uuid}"]
    return list(dict.fromkeys(out))


def _nvml_handle(pynvml: Any, torch_uuid: str, physical_index: int | None) -> Any:
    error: Exception | None = None
    for uuid in nvml_uuid_candidates(torch_uuid, os.environ.get("CUDA_VISIBLE_DEVICES")):
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(uuid)
        except pynvml.NVMLError as exc:
            error = exc
    # The physical index from cuda:N (NVML numbers in PCI order, as the worker's
    # CUDA_DEVICE_ORDER=PCI_BUS_ID does) is the last resort.
    if physical_index is None:
        assert error is not None
        raise error
    return pynvml.nvmlDeviceGetHandleByIndex(physical_index)


def start_gpu_sampler(
    device: str, metrics: WorkerMetrics, interval_s: float = 2.0
) -> GpuSampler | None:
    """Start sampling when this worker runs on CUDA; None (no GPU series at all) otherwise."""
    if not device.startswith("cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    # Pinning makes the worker's one GPU cuda:0 inside this process.
    props = torch.cuda.get_device_properties(0)
    index = device.partition(":")[2]
    util = nvml_util_reader(str(props.uuid), int(index) if index.isdigit() else None)
    # Allocated is what tensors hold; reserved adds the caching allocator's free blocks,
    # which the process holds too (what nvidia-smi and an OOM see).
    sampler = GpuSampler(
        device,
        metrics,
        lambda: float(torch.cuda.memory_allocated(0)),
        util,
        interval_s,
        read_reserved=lambda: float(torch.cuda.memory_reserved(0)),
    )
    return sampler.start()
