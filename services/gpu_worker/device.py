"""Device pinning and precision choices for one worker process.

``pin_device`` runs before torch is imported: a worker for ``cuda:N`` sees only GPU N through
``CUDA_VISIBLE_DEVICES`` and addresses it as ``cuda:0``. Nothing here touches CUDA in a
parent process; ``resolve_device`` is called only inside the worker.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

_CUDA_N = re.compile(r"^cuda:(\d+)$")
_GPU_UUID = re.compile(r"^(GPU|MIG)-[0-9A-Za-z/-]+$")


def cuda_env(env: MutableMapping[str, str]) -> None:
    """CUDA settings every GPU worker needs, set before torch is imported.

    - ``CUDA_DEVICE_ORDER=PCI_BUS_ID``: CUDA numbers GPUs fastest-first by default, while
      nvidia-smi, NVML, /proc/driver/nvidia and the supervisor number them in PCI order;
      without it ``cuda:1`` may be another GPU than nvidia-smi's GPU 1.
    - ``expandable_segments:True`` in ``PYTORCH_CUDA_ALLOC_CONF``: batches of varying size
      fragment the caching allocator; expandable segments let it grow one mapping instead
      (PyTorch docs, "CUDA memory management"). A user's own allocator settings win.
    """
    env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    if "PYTORCH_CUDA_ALLOC_CONF" not in env and "PYTORCH_ALLOC_CONF" not in env:
        env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"


def device_label(setting: str, visible: str | None) -> str:
    """The label a CUDA worker reports: ``cuda:N``, or ``cuda:<UUID>`` when pinned by UUID.

    A worker pinned with ``CUDA_VISIBLE_DEVICES=GPU-...`` (or a MIG UUID) sees its GPU as
    ``cuda:0`` like every other pinned worker; labelling it ``cuda:0`` would merge all such
    workers into one series, so it is labelled by the UUID, which names it uniquely.
    """
    one = (visible or "").strip()
    if one and "," not in one and _GPU_UUID.match(one):
        return f"cuda:{one}"
    if setting == "cuda":
        return "cuda:0"
    return setting


@dataclass(frozen=True)
class DevicePlan:
    """What a worker runs on: the label it reports and the device torch uses."""

    label: str  # as the operator names it: cpu, cuda:2
    torch_device: str  # as torch sees it after pinning: cpu, cuda:0, or auto


def pin_device(setting: str, env: MutableMapping[str, str] | None = None) -> DevicePlan:
    """Set CUDA_VISIBLE_DEVICES for ``cuda:N`` (unless a supervisor already did) and plan."""
    if env is None:
        env = os.environ
    if setting == "cpu":
        # Hide GPUs so no library initialises CUDA behind our back.
        env["CUDA_VISIBLE_DEVICES"] = ""
        return DevicePlan("cpu", "cpu")
    match = _CUDA_N.match(setting)
    if match or setting == "cuda":
        cuda_env(env)
    if match:
        physical = match.group(1)
        visible = env.get("CUDA_VISIBLE_DEVICES")
        if visible is None or visible == "":
            env["CUDA_VISIBLE_DEVICES"] = physical
        elif "," in visible:
            # Several GPUs visible: keep one, the one asked for, by its position.
            ids = [part.strip() for part in visible.split(",")]
            index = int(physical)
            if index >= len(ids):
                raise ValueError(f"{setting} is not among CUDA_VISIBLE_DEVICES={visible}")
            env["CUDA_VISIBLE_DEVICES"] = ids[index]
        return DevicePlan(device_label(setting, env.get("CUDA_VISIBLE_DEVICES")), "cuda:0")
    if setting == "cuda":
        return DevicePlan(device_label(setting, env.get("CUDA_VISIBLE_DEVICES")), "cuda:0")
    return DevicePlan("auto", "auto")


def resolve_device(plan: DevicePlan) -> tuple[torch.device, str]:
    """The torch device and the label, deciding ``auto`` now (inside the worker)."""
    import torch

    if plan.torch_device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda:0"), "cuda:0"
        return torch.device("cpu"), "cpu"
    device = torch.device(plan.torch_device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {plan.label} asked for, but CUDA is not available here")
    return device, plan.label


def autocast_kwargs(device_type: str, dtype_name: str) -> dict[str, Any] | None:
    """Autocast arguments: fp16/bf16 on CUDA, None (plain fp32) on the CPU."""
    if device_type != "cuda":
        return None
    import torch

    dtype = torch.bfloat16 if dtype_name == "bfloat16" else torch.float16
    return {"device_type": "cuda", "dtype": dtype}


def _cgroup_cpus(root: Path) -> float | None:
    """CPUs the cgroup quota allows (v2 ``cpu.max``, else v1 CFS files); None if unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass  # no cgroup v2 controller file here: try v1
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def available_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may really use: affinity mask, capped by the cgroup quota.

    ``os.cpu_count()`` counts the node's cores (hundreds on a GPU node) while a pod asks for
    two; sizing threads by it starts hundreds of threads that fight over two CPUs' worth
    of quota and get throttled. A fractional quota rounds up (1.5 CPUs -> 2), at least 1.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpus(cgroup_root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


# The most threads of each kind a worker starts by default (VISIONQ_DECODE_THREADS and
# VISIONQ_TORCH_THREADS may ask for more).
MAX_DEFAULT_THREADS = 16


def default_threads(device_type: str, cores: int | None) -> tuple[int, int]:
    """(torch intra-op threads, decode threads) for this machine.

    On the CPU the forward and the JPEG decoding share the cores: one intra-op thread leaves
    the rest to decoding the next batch, which measured faster than a wider forward that
    fights the decoder. On CUDA the CPU only decodes.
    """
    # Capped: without a CPU limit (a pod with requests only) there is no cgroup quota, and
    # the affinity mask is the node's cores -- hundreds of threads for a pod that asked for
    # two. Manifests set VISIONQ_DECODE_THREADS to their request; this bounds the rest.
    n = min(max(1, cores or 1), MAX_DEFAULT_THREADS)
    if device_type == "cuda":
        return 1, n
    return max(1, n - 1), max(1, n - 1)
