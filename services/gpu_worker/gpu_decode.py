"""Opt-in JPEG decoding on the GPU (nvJPEG), one call per batch, with the CPU as fallback.

On a GPU box the CPU often becomes the bottleneck decoding JPEGs; ``VISIONQ_GPU_DECODE=1``
checks each image on the decode threads (header, structure, EXIF orientation: cheap) and
decodes all plain JPEGs of a batch in ONE nvJPEG call when the batch is collated: TorchCodec's
``decode_jpeg`` (the current API) when it is installed, else torchvision's ``decode_jpeg``
(deprecated since torchvision 0.29 in favour of TorchCodec) with a list. One call per batch
because nvJPEG decodes a list in one batched pass, while per-image calls from many threads
are serialised and synchronise a stream each. It then applies the EXIF orientation and
resizes and crops on the device. Any other format, a JPEG that needs colour management
(CMYK/YCCK, a non-sRGB ICC profile), one whose resized image would be large (an extreme
aspect ratio: the CPU path resamples only the crop), or a JPEG nvJPEG refuses takes the
ordinary PIL path, so the result is always an image or that job's own error. Outputs differ
from the PIL path by resampling details (a few 1e-3 in scores), so it is off by default.
"""

from __future__ import annotations

import functools
import importlib
import io
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

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
from services.gpu_worker.cuda_errors import is_device_fault

logger = logging.getLogger(__name__)


@dataclass
class PendingJpeg:
    """A checked plain JPEG waiting for the batch's one nvJPEG call."""

    data: torch.Tensor  # the encoded bytes, uint8 1-D, on the CPU
    orientation: int  # EXIF orientation 1-8
    resize_size: int
    input_size: int
    bicubic: bool
    on_cpu: Callable[[], np.ndarray]  # the PIL path, if nvJPEG refuses it


Decoded = np.ndarray | torch.Tensor | PendingJpeg


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
    """A per-image step for the decode threads: ``PendingJpeg`` for plain JPEGs (decoded
    with the whole batch in ``stack_batch``), numpy uint8 (3, S, S) from PIL for the rest.
    Raises the image's own error (``invalid_image`` and friends) from the checks."""
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
        return PendingJpeg(
            data=torch.frombuffer(bytearray(data[: info.length]), dtype=torch.uint8),
            orientation=info.orientation,
            resize_size=pre.resize_size,
            input_size=pre.input_size,
            bicubic=pre.interpolation == "bicubic",
            on_cpu=lambda: on_cpu(data),
        )

    return decode


@functools.cache
def _torchcodec() -> Any:
    """TorchCodec's decoders module, or None where it is not installed (optional: ``gpu``)."""
    try:
        return importlib.import_module("torchcodec.decoders")
    except Exception as exc:  # absent, or a build that does not load with this torch
        if not isinstance(exc, ImportError) or "torchcodec" not in str(exc):
            logger.warning("TorchCodec does not load (%s); using torchvision's decode_jpeg", exc)
        return None


def _probe_jpeg() -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    Image.new("RGB", (16, 8), (90, 120, 150)).save(buf, "JPEG", exif=exif.tobytes())
    return buf.getvalue()


@functools.cache
def _codec_on(device: torch.device) -> tuple[Any, bool] | None:
    """(TorchCodec's decode_jpeg, whether it applies EXIF orientation itself) on ``device``.

    TorchCodec's CPU decoder applies the EXIF orientation (torchvision's does not); whether
    its nvJPEG path does is found out here with a 16x8 probe tagged "rotate 90": so the
    orientation is applied exactly once either way. None: TorchCodec absent or failing.
    """
    codec = _torchcodec()
    if codec is None:
        return None
    try:
        (probe,) = codec.decode_jpeg([_probe_jpeg()], mode="RGB", device=device)
    except Exception as exc:
        logger.warning("TorchCodec cannot decode on %s (%s); using torchvision", device, exc)
        return None
    return codec.decode_jpeg, tuple(probe.shape[-2:]) == (16, 8)


def _decode_jpegs(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """ONE batched decode of encoded JPEGs to uint8 RGB (3, H, W) on ``device``, upright
    only if the decoder applied EXIF itself (see ``decoder_applies_exif``)."""
    codec = _codec_on(device)
    if codec is not None:
        return list(codec[0](list(data), mode="RGB", device=device))
    from torchvision.io import ImageReadMode, decode_jpeg

    out = decode_jpeg(list(data), mode=ImageReadMode.RGB, device=device)
    return list(out)


def decoder_applies_exif(device: torch.device) -> bool:
    """Whether ``_decode_jpegs`` returns images already turned upright on ``device``."""
    codec = _codec_on(device)
    return codec is not None and codec[1]


def _refused(exc: BaseException) -> bool:
    # A JPEG nvJPEG can't decode (unsupported sampling, corrupt data) is the image's
    # problem; a sticky CUDA error is the device's and must end the worker.
    return isinstance(exc, (RuntimeError, ValueError)) and not is_device_fault(exc)


def _finish(image: torch.Tensor, item: PendingJpeg, upright: bool) -> torch.Tensor:
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F  # noqa: N812

    mode = InterpolationMode.BICUBIC if item.bicubic else InterpolationMode.BILINEAR
    if not upright:
        image = orient_chw(image, item.orientation)
    image = F.resize(image, [item.resize_size], interpolation=mode, antialias=True)
    out: torch.Tensor = F.center_crop(image, [item.input_size, item.input_size])
    return out


def decode_pending(
    items: list[PendingJpeg], device: torch.device
) -> list[np.ndarray | torch.Tensor]:
    """Decode, orient, resize and crop a batch's JPEGs: one nvJPEG call for all of them.

    nvJPEG returns no partial results, so if the batch call fails each image is decoded on
    its own, and one it refuses takes the PIL path.
    """
    if not items:
        return []
    upright = decoder_applies_exif(device)
    try:
        images = _decode_jpegs([it.data for it in items], device)
    except Exception as exc:
        if not _refused(exc):
            raise
        logger.debug("batched nvJPEG decode failed (%s); decoding one by one", exc)
        images = None
    if images is not None:
        return [_finish(img, it, upright) for img, it in zip(images, items, strict=True)]
    out: list[np.ndarray | torch.Tensor] = []
    for it in items:
        try:
            (image,) = _decode_jpegs([it.data], device)
        except Exception as exc:
            if not _refused(exc):
                raise
            logger.debug("nvJPEG refused an image (%s); decoding on the CPU", exc)
            out.append(it.on_cpu())
            continue
        out.append(_finish(image, it, upright))
    return out


def stack_batch(items: list[Decoded], device: torch.device) -> np.ndarray | torch.Tensor:
    """One uint8 (N, 3, S, S) batch: numpy when all came from PIL, else on ``device``."""
    pending = [item for item in items if isinstance(item, PendingJpeg)]
    decoded = iter(decode_pending(pending, device))
    merged = [next(decoded) if isinstance(item, PendingJpeg) else item for item in items]
    if all(isinstance(item, np.ndarray) for item in merged):
        return np.stack(merged)
    return torch.stack(
        [
            item.to(device) if isinstance(item, torch.Tensor) else torch.from_numpy(item).to(device)
            for item in merged
        ]
    )
