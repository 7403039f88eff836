"""Device pinning and precision choices for one worker process.

``pin_device`` runs before torch is imported: a worker for ``cuda:N`` sees only GPU N through
``CUDA_VISIBLE_DEVICES`` and addresses it as ``cuda:0``. Nothing here touches CUDA in a
parent process; ``resolve_device`` is called only inside the worker.
"""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

_CUDA_N = re.compile(r"^cuda:(\d+)$")


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
        return DevicePlan(setting, "cuda:0")
    if setting == "cuda":
        return DevicePlan("cuda:0", "cuda:0")
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


def default_threads(device_type: str, cores: int | None) -> tuple[int, int]:
    """(torch intra-op threads, decode threads) for this machine.

    On the CPU the forward and the JPEG decoding share the cores: one intra-op thread leaves
    the rest to decoding the next batch, which measured faster than a wider forward that
    fights the decoder. On CUDA the CPU only decodes.
    """
    n = max(1, cores or 1)
    if device_type == "cuda":
        return 1, n
    return max(1, n - 1), max(1, n - 1)
