"""Opt-in JPEG decoding on the GPU (nvJPEG through torchvision), with the CPU as fallback.

On a GPU box the CPU often becomes the bottleneck decoding JPEGs; ``VISIONQ_GPU_DECODE=1``
decodes them with ``torchvision.io.decode_jpeg(device="cuda")``, applies the EXIF
orientation, and resizes and crops on the device. Any other format, a JPEG that needs colour
management (CMYK/YCCK, a non-sRGB ICC profile), one whose resized image would be large (an
extreme aspect ratio: the CPU path resamples only the crop), or a JPEG nvJPEG refuses takes
the ordinary PIL path, so the result is always an image or that job's own ``invalid_image``.
Outputs differ from the PIL path by resampling details (a few 1e-3 in scores), so it is off
by default.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import numpy as np
import torch

from models.preprocess import (
    FULL_RESIZE_LIMIT,
    WHITE,
    Color,
    check_image,
    crop_plan,
    decode_and_preprocess,
)
from models.specs import Preprocess

logger = logging.getLogger(__name__)

Decoded = np.ndarray | torch.Tensor


def orient_chw(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """A (C, H, W) tensor turned as EXIF orientation 1-8 says (as PIL's exif_transpose)."""
    if orientation in (5, 6, 7, 8):
        image = image.transpose(-1, -2)  # 5: transpose
        orientation = {5: 1, 6: 2, 7: 3, 8: 4}[orientation]
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-1, -2)
    if orientation == 4:
        return image.flip(-2)
    return image


def make_gpu_decoder(
    pre: Preprocess,
    max_pixels: int,
    device: torch.device,
    *,
    background: Color = WHITE,
    formats: Iterable[str] | None = None,
) -> Callable[[bytes], Decoded]:
    """A per-image decoder: CUDA uint8 (3, S, S) for plain JPEGs, numpy uint8 for the rest."""
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F  # noqa: N812

    mode = (
        InterpolationMode.BICUBIC if pre.interpolation == "bicubic" else InterpolationMode.BILINEAR
    )
    accepted = tuple(formats) if formats is not None else None

    def on_cpu(data: bytes) -> np.ndarray:
        return decode_and_preprocess(
            data, pre, max_pixels=max_pixels, background=background, formats=accepted
        )

    def decode(data: bytes) -> Decoded:
        info = check_image(data, max_pixels=max_pixels, formats=accepted)  # header, structure
        plan = crop_plan(*info.display_size, pre)
        if (
            info.format != "JPEG"
            or info.mode not in ("RGB", "L")
            or info.icc
            or plan.resized[0] * plan.resized[1] > FULL_RESIZE_LIMIT * pre.input_size**2
        ):
            return on_cpu(data)
        try:
            raw = torch.frombuffer(bytearray(data[: info.length]), dtype=torch.uint8)
            img = decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
        except RuntimeError as exc:
            logger.debug("nvJPEG refused an image (%s); decoding on the CPU", exc)
            return on_cpu(data)
        img = orient_chw(img, info.orientation)
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
