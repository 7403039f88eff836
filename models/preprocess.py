"""Image checks, decoding and preprocessing with PIL and numpy (no torch).

The API calls ``check_image`` on uploads (headers and structure only, no pixel decoded); the
worker calls ``decode_and_preprocess``, which reads the picture as a viewer shows it
(``models.imaging.decode``), reproduces torchvision's ``ImageClassification`` geometry and
leaves normalisation to the batch, on the device.

Cost is bounded by the model's input, whatever the aspect ratio: the centre crop is worked
out in source coordinates and only that region is resampled (``Image.resize(box=...)``),
which gives the same pixels as resizing the whole image and then cropping. A 1x30000 PNG
used to become a 256 x 7.7 million intermediate (about 6 GB); now it is 224x224.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image

from models.imaging.decode import (
    WHITE,
    Color,
    ImageInfo,
    check_image,
    decode_image,
    decode_scaled,
    to_viewer_rgb,
)
from models.imaging.formats import KNOWN_FORMATS, available_formats, sniff_format
from models.specs import Preprocess

__all__ = [
    "ACCEPTED_FORMATS",
    "FAST_REDUCING_GAP",
    "FULL_RESIZE_LIMIT",
    "KNOWN_FORMATS",
    "WHITE",
    "Color",
    "CropPlan",
    "ImageInfo",
    "available_formats",
    "check_image",
    "crop_plan",
    "decode_and_preprocess",
    "decode_image",
    "decode_scaled",
    "fast_min_side",
    "normalize_batch_numpy",
    "preprocess",
    "preprocess_fast",
    "sniff_format",
    "to_viewer_rgb",
]

logger = logging.getLogger(__name__)

# Every format this install decodes; VISIONQ_ACCEPTED_FORMATS may narrow it.
ACCEPTED_FORMATS: tuple[str, ...] = available_formats()

# Up to this many times the crop's area the whole image is resized (exact); beyond, only the
# cropped region is (within one level of the exact pixels on about 0.1 % of values).
FULL_RESIZE_LIMIT = 4
# VISIONQ_FAST_DECODE: Pillow shrinks by a whole factor first (Image.reduce, a box filter)
# while the remaining resample still reduces by at least this much; Pillow's docs call 3.0
# "indistinguishable" from a fair resample.
FAST_REDUCING_GAP = 3.0
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def _resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    # torchvision F.resize with an int: the short side becomes size, the long side is truncated.
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


@dataclass(frozen=True)
class CropPlan:
    """torchvision's resize-then-centre-crop for one image size, in both coordinate systems."""

    resized: tuple[int, int]  # the whole image after resizing its short side
    crop: tuple[int, int, int, int]  # the crop in resized pixels (left, top, right, bottom)
    box: tuple[float, float, float, float]  # the same region in source pixels
    pad: tuple[int, int]  # zeros torchvision adds (x, y) when the resized side is too short

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the cropped region before padding."""
        return self.crop[2] - self.crop[0], self.crop[3] - self.crop[1]


def crop_plan(width: int, height: int, pre: Preprocess) -> CropPlan:
    """Where torchvision's ``ImageClassification`` samples a width x height image."""
    rw, rh = _resized_size(width, height, pre.resize_size)
    crop = pre.input_size
    cw, ch = min(crop, rw), min(crop, rh)
    left = round((rw - crop) / 2.0) if rw > crop else 0
    top = round((rh - crop) / 2.0) if rh > crop else 0
    sx, sy = width / rw, height / rh
    box = (left * sx, top * sy, min((left + cw) * sx, width), min((top + ch) * sy, height))
    return CropPlan((rw, rh), (left, top, left + cw, top + ch), box, (crop - cw, crop - ch))


def _resample_region(image: Image.Image, plan: CropPlan, pre: Preprocess) -> Image.Image:
    """The pixels PIL's full ``resize`` would give inside ``box``, computed for the box only.

    PIL resizes in two passes, horizontal then vertical, rounding to uint8 in between; with
    a ``box`` it may pick the other order, which moves pixels by up to 10 levels (bicubic).
    So the passes are run here one at a time, in PIL's full-image order: the horizontal pass
    over the band of rows the vertical filter reads, then the vertical pass over that band.
    """
    resample = _RESAMPLE[pre.interpolation]
    x0, y0, x1, y1 = plan.box
    width, height = plan.size
    # Rows the vertical filter touches: its support (1 bilinear, 2 bicubic) widens with the
    # downscale factor; one more row each side absorbs rounding in PIL's bounds.
    scale = max((y1 - y0) / height, 1.0)
    reach = (1.0 if pre.interpolation == "bilinear" else 2.0) * scale + 1.0
    first = max(0, math.floor(y0 - reach))
    last = min(image.height, math.ceil(y1 + reach))
    band = image.crop((0, first, image.width, last))
    across = band.resize((width, band.height), resample, box=(x0, 0, x1, band.height))
    return across.resize((width, height), resample, box=(0, y0 - first, width, y1 - first))


def preprocess(image: Image.Image, pre: Preprocess) -> npt.NDArray[np.uint8]:
    """Resize and centre crop exactly like torchvision's ImageClassification; uint8 (3, S, S).

    Only the cropped region is resampled, so time and memory depend on the input size, not on
    the resized image (see the module doc).
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    plan = crop_plan(image.width, image.height, pre)
    if plan.resized == image.size:
        region = image.crop(plan.crop)  # no resize: a plain crop
    elif plan.resized[0] * plan.resized[1] <= FULL_RESIZE_LIMIT * pre.input_size**2:
        # Bounded already (aspect ratios up to about 3:1): resize it all, as torchvision does,
        # so the pixels are bit-identical to the reference.
        region = image.resize(plan.resized, _RESAMPLE[pre.interpolation]).crop(plan.crop)
    else:
        region = _resample_region(image, plan, pre)
    return _chw(np.asarray(region, dtype=np.uint8), plan.pad)


def _chw(pixels: npt.NDArray[np.uint8], pad: tuple[int, int]) -> npt.NDArray[np.uint8]:
    pad_w, pad_h = pad
    if pad_w or pad_h:
        # torchvision pads with zeros (left/top get the smaller half) before cropping.
        pixels = np.pad(
            pixels, ((pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2), (0, 0))
        )
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def fast_min_side(pre: Preprocess) -> int:
    """The smallest side ``VISIONQ_FAST_DECODE`` lets libjpeg decode a JPEG down to.

    The model's input (crop) size: the cropped region is then resampled from at least
    ``input_size * input_size / resize_size`` source pixels a side (196 of 224 for
    mobilenet_v3_small), an upscale of at most ``resize_size / input_size`` (1.14x). The
    stricter bound ``resize_size`` (never upscale) leaves a 640x480 photo at full scale;
    ``python -m models.imaging.fast_decode_check --min-side resize`` measures both.
    """
    return pre.input_size


def preprocess_fast(image: Image.Image, pre: Preprocess) -> npt.NDArray[np.uint8]:
    """Inexact ``preprocess``: the crop's source region resampled straight to the input size.

    One ``resize(box=...)`` instead of resizing the whole image and cropping (the region is
    about 60 % of a 4:3 image's resized pixels), with ``FAST_REDUCING_GAP`` so a big
    non-JPEG is first box-reduced by a whole factor. Same geometry as torchvision's resize +
    centre crop; pixels within a few levels of ``preprocess`` (Pillow may round the passes
    differently with a box). uint8 (3, S, S).
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    plan = crop_plan(image.width, image.height, pre)
    region = image.resize(
        plan.size, _RESAMPLE[pre.interpolation], box=plan.box, reducing_gap=FAST_REDUCING_GAP
    )
    return _chw(np.asarray(region, dtype=np.uint8), plan.pad)


def decode_and_preprocess(
    data: bytes,
    pre: Preprocess,
    *,
    max_pixels: int,
    background: Color = WHITE,
    formats: Iterable[str] | None = None,
    fast_decode: bool = False,
) -> npt.NDArray[np.uint8]:
    """Decode an upload as a viewer shows it and preprocess it: uint8 (3, S, S).

    ``fast_decode`` (``VISIONQ_FAST_DECODE``, off by default) decodes JPEGs at 1/2, 1/4 or
    1/8 scale in libjpeg's DCT domain, both sides kept >= ``fast_min_side(pre)``, and
    resamples with ``preprocess_fast``. Measured with ``python -m
    models.imaging.fast_decode_check`` (README, Performance): about half the CPU time for a
    640x480 JPEG and a third for a 12 MP photo, with scores that move a little, hence
    opt-in. EXIF orientation, ICC, alpha and 16-bit handling are the same on both paths.
    Raises what ``decode_image`` raises (400, 413, 415 errors).
    """
    image, _ = decode_scaled(
        data,
        max_pixels=max_pixels,
        background=background,
        formats=formats,
        min_side=fast_min_side(pre) if fast_decode else None,
    )
    return preprocess_fast(image, pre) if fast_decode else preprocess(image, pre)


def normalize_batch_numpy(
    batch_uint8: npt.NDArray[np.uint8], pre: Preprocess
) -> npt.NDArray[np.float32]:
    """Reference normalisation of a uint8 (N, 3, H, W) batch: ``(x / 255 - mean) / std``."""
    mean = np.asarray(pre.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(pre.std, dtype=np.float32).reshape(1, 3, 1, 1)
    scaled = batch_uint8.astype(np.float32) / np.float32(255.0)
    result: npt.NDArray[np.float32] = (scaled - mean) / std
    return result
