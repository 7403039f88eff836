"""Which GPUs this machine shows, found without a single CUDA call.

The CLI forks the workers; touching CUDA here (even ``torch.cuda.is_available()``) would
break CUDA in every child, so the GPUs are counted from the environment, /proc and
nvidia-smi instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from services.common.errors import ConfigError

# Module-level so tests can point it at a fake /proc.
PROC_GPUS_DIR = Path("/proc/driver/nvidia/gpus")
NVIDIA_SMI_TIMEOUT_S = 5.0

_SMI_LINE = re.compile(r"^GPU (\d+):")


def _from_cuda_visible_devices(value: str) -> list[str]:
    ids: list[str] = []
    for part in value.split(","):
        part = part.strip()
        # CUDA stops reading the list at the first invalid entry; "-1" is the usual "none".
        if not part or part.startswith("-"):
            break
        ids.append(part)
    return ids


def _from_proc(proc_dir: Path) -> list[str] | None:
    try:
        entries = [entry for entry in proc_dir.iterdir() if entry.is_dir()]
    except OSError:
        return None
    return [str(i) for i in range(len(entries))] if entries else None


def _from_nvidia_smi() -> list[str]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, "-L"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return [m.group(1) for line in out.stdout.splitlines() if (m := _SMI_LINE.match(line))]


def visible_gpus() -> list[str]:
    """GPU ids (indices or UUIDs, as CUDA_VISIBLE_DEVICES takes them) visible to children."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return _from_cuda_visible_devices(env)
    from_proc = _from_proc(PROC_GPUS_DIR)
    if from_proc is not None:
        return from_proc
    return _from_nvidia_smi()


def parse_gpu_arg(spec: str, visible: list[str] | None = None) -> list[str]:
    """Turn ``--gpus all`` or ``--gpus 0,2`` into GPU ids; raise ConfigError for bad ones."""
    if visible is None:
        visible = visible_gpus()
    spec = spec.strip()
    if not visible:
        raise ConfigError(
            "no GPU visible (checked CUDA_VISIBLE_DEVICES, /proc/driver/nvidia/gpus and "
            "nvidia-smi); use `visionq worker --device cpu` for a CPU worker"
        )
    if spec == "all":
        return list(visible)
    chosen: list[str] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            raise ConfigError(f"--gpus {spec!r}: empty entry; write e.g. --gpus 0,2 or all")
        if part not in visible:
            raise ConfigError(
                f"--gpus: GPU {part!r} is not visible; visible GPUs: {', '.join(visible)}"
            )
        if part in chosen:
            raise ConfigError(f"--gpus: GPU {part!r} named twice")
        chosen.append(part)
    return chosen
