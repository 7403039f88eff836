"""Torch helpers the built-in handlers share: device-side normalisation, uint8 -> float."""

from __future__ import annotations

import numpy as np
import torch

from models.specs import Preprocess


class Normalizer:
    """uint8 NCHW batch -> normalised float batch on the device, in the model's layout."""

    def __init__(self, pre: Preprocess, device: torch.device, channels_last: bool) -> None:
        self.device = device
        self.channels_last = channels_last and device.type == "cuda"
        self.mean = torch.tensor(pre.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(pre.std, device=device).view(1, 3, 1, 1)
        # One page-locked staging buffer, grown to the largest batch and reused: a fresh
        # pin_memory() per batch is a page-locking allocation on the hot path.
        self._pinned: torch.Tensor | None = None
        self._copied: torch.cuda.Event | None = None

    def _upload(self, host: torch.Tensor) -> torch.Tensor:
        """Copy a CPU batch to the GPU through the reused pinned buffer (asynchronously)."""
        n = host.numel()
        if self._pinned is None or self._pinned.numel() < n or self._pinned.dtype != host.dtype:
            self._pinned = torch.empty(n, dtype=host.dtype, pin_memory=True)
        elif self._copied is not None:
            # The previous batch's copy may still be reading the buffer.
            self._copied.synchronize()
        staging = self._pinned[:n].view(host.shape)
        staging.copy_(host)
        out = staging.to(self.device, non_blocking=True)
        self._copied = torch.cuda.Event()  # type: ignore[no-untyped-call]
        self._copied.record()
        return out

    def __call__(self, batch: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Normalise on the device: the host copy stays uint8 (4x fewer bytes to move)."""
        host = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(batch)
        if self.device.type == "cuda" and host.device.type == "cpu":
            x = self._upload(host).float().div_(255.0)
        else:
            x = host.to(self.device).float().div_(255.0)
        x = x.sub_(self.mean).div_(self.std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def to_device_float(image: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """One uint8 (3, H, W) image -> float32 in [0, 1] on ``device`` (detectors' input)."""
    host = image if isinstance(image, torch.Tensor) else torch.from_numpy(image)
    if device.type == "cuda" and host.device.type == "cpu":
        host = host.pin_memory()
    return host.to(device, non_blocking=True).float().div_(255.0)


# Enough compiled graphs for every batch bucket of a max batch of up to 1024 (11 buckets) and
# a few input sizes; past the limit dynamo silently falls back to eager.
RECOMPILE_LIMIT = 32


def prepare_module(
    module: torch.nn.Module, device: torch.device, *, channels_last: bool, compile: bool
) -> torch.nn.Module:
    """channels_last on CUDA, and ``torch.compile`` with static shapes when asked.

    ``dynamic=False``: one specialised graph per batch shape (the runtime pads batches to
    buckets and compiles each at warm-up), never a dynamic-shape graph, which is slower and
    would be built on the first live batch of a second size. No CUDA graphs
    (``mode="reduce-overhead"``): their outputs are overwritten by the next replay, and a
    split retry runs several forwards before the outputs are encoded. Inductor's cache goes
    to ``TORCHINDUCTOR_CACHE_DIR`` (a volume in compose/k8s) so restarts reuse kernels.
    """
    if channels_last and device.type == "cuda":
        module = module.to(memory_format=torch.channels_last)
    if compile:
        import torch._dynamo.config as dynamo_config

        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
        module = torch.compile(module, dynamic=False)  # type: ignore[assignment]
    return module
