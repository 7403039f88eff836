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

    def __call__(self, batch: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Normalise on the device: the host copy stays uint8 (4x fewer bytes to move)."""
        host = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(batch)
        if self.device.type == "cuda" and host.device.type == "cpu":
            host = host.pin_memory()
        x = host.to(self.device, non_blocking=True).float().div_(255.0)
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


def prepare_module(
    module: torch.nn.Module, device: torch.device, *, channels_last: bool, compile: bool
) -> torch.nn.Module:
    """channels_last on CUDA, and ``torch.compile`` when asked (compiles lazily per shape)."""
    if channels_last and device.type == "cuda":
        module = module.to(memory_format=torch.channels_last)
    if compile:
        module = torch.compile(module)  # type: ignore[assignment]
    return module
