"""Opt-in JPEG decoding on the GPU (nvJPEG through torchvision), with the CPU as fallback.

On a GPU box the CPU often becomes the bottleneck decoding JPEGs; ``VISIONQ_GPU_DECODE=1``
decodes them with ``torchvision.io.decode_jpeg(device="cuda")`` and resizes and crops on
the device. Any other format, or a JPEG nvJPEG refuses, takes the ordinary PIL path, so
the result is always an image or that job's own ``invalid_image``. Outputs differ from the
PIL path by resampling details (a few 1e-3 in scores), so it is off by default.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from models.preprocess import check_image, decode_and_preprocess
from models.specs import Preprocess

logger = logging.getLogger(__name__)

Decoded = np.ndarray | torch.Tensor


def make_gpu_decoder(
    pre: Preprocess, max_pixels: int, device: torch.device
) -> Callable[[bytes], Decoded]:
    """A per-image decoder: CUDA uint8 (3, S, S) for JPEGs, numpy uint8 for the rest."""
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F  # noqa: N812

    mode = (
        InterpolationMode.BICUBIC if pre.interpolation == "bicubic" else InterpolationMode.BILINEAR
    )

    def decode(data: bytes) -> Decoded:
        info = check_image(data, max_pixels=max_pixels)  # header, pixel cap, truncation
        if info.format != "JPEG":
            return decode_and_preprocess(data, pre, max_pixels=max_pixels)
        try:
            raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            img = decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
        except RuntimeError as exc:
            logger.debug("nvJPEG refused an image (%s); decoding on the CPU", exc)
            return decode_and_preprocess(data, pre, max_pixels=max_pixels)
        img = F.resize(img, [pre.resize_size], interpolation=mode, antialias=True)
        out: torch.Tensor = F.center_crop(img, [pre.input_size, pre.input_size])
        return out

    return decode


def stack_batch(items: list[Decoded], device: torch.device) -> np.ndarray | torch.Tensor:
    """One uint8 batch from per-image results: numpy when all are numpy, else on device."""
    if all(isinstance(item, np.ndarray) for item in items):
        return np.stack(items)
    return torch.stack(
        [
            item.to(device) if isinstance(item, torch.Tensor) else torch.from_numpy(item).to(device)
            for item in items
        ]
    )
