"""Image checks, decoding and preprocessing with PIL and numpy (no torch).

The API calls ``check_image`` on uploads (cheap: headers and trailers only); the worker calls
``decode_and_preprocess``, which reproduces torchvision's ``ImageClassification`` geometry and
leaves normalisation to the batch, on the device.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from io import BytesIO

import numpy as np
import numpy.typing as npt
from PIL import Image

from models.specs import Preprocess
from services.common.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType

logger = logging.getLogger(__name__)

ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
# Some encoders and uploaders pad files; tolerate a little padding after the end marker.
_PADDING = b"\x00\r\n\t "
_TRAILER_WINDOW = 64
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


@dataclass(frozen=True)
class ImageInfo:
    """What a header says about an image."""

    format: str
    width: int
    height: int


def sniff_format(data: bytes) -> str | None:
    """The image format named by the leading magic bytes, or None (PIL names: JPEG, PNG...)."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(_PNG_SIGNATURE):
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if data[:2] == b"BM":
        return "BMP"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1"):
            return "HEIF"
    return None


def _truncated(fmt: str, data: bytes) -> bool:
    if fmt == "WEBP":
        return len(data) - 8 < int.from_bytes(data[4:8], "little")
    tail = data[-_TRAILER_WINDOW:].rstrip(_PADDING)
    if fmt == "JPEG":
        return not tail.endswith(b"\xff\xd9")
    return not tail.endswith(_PNG_IEND)


def _too_large(width: int, height: int, max_pixels: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"image has {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
        pixels=width * height,
        max_pixels=max_pixels,
    )


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Open (header only) an accepted image whose size and trailer pass the checks."""
    if not data:
        raise InvalidImage("the upload is empty")
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedMediaType("not an image; send JPEG, PNG or WebP")
    if fmt not in ACCEPTED_FORMATS:
        raise UnsupportedMediaType(f"{fmt} is not accepted; send JPEG, PNG or WebP", format=fmt)
    try:
        image = Image.open(BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as exc:
        # PIL refuses huge headers before we see the size; its message carries the count.
        found = _BOMB_PIXELS.search(str(exc))
        pixels = found.group(1) if found else "too many"
        raise PayloadTooLarge(
            f"image has {pixels} pixels; the limit is {max_pixels}", max_pixels=max_pixels
        ) from exc
    except Exception as exc:  # PIL raises many types on a bad header
        raise InvalidImage(f"cannot read the {fmt} header: {exc}") from exc
    width, height = image.size
    if width <= 0 or height <= 0:
        image.close()
        raise InvalidImage(f"{fmt} header declares an empty image ({width}x{height})")
    if width * height > max_pixels:
        image.close()
        raise _too_large(width, height, max_pixels)
    if _truncated(fmt, data):
        image.close()
        raise InvalidImage(f"the {fmt} data is truncated")
    return image


def check_image(data: bytes, *, max_pixels: int) -> ImageInfo:
    """Cheap upload check without decoding pixels; raises InvalidImage, 413 or 415 errors."""
    image = _open(data, max_pixels)
    with image:
        return ImageInfo(format=str(image.format), width=image.width, height=image.height)


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode an accepted upload to RGB; the pixel limit is checked before decoding."""
    image = _open(data, max_pixels)
    with image:
        fmt = image.format
        try:
            image.load()
            return image.convert("RGB")
        except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError, ...
            raise InvalidImage(f"cannot decode the {fmt} image: {exc}") from exc


def _resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    # torchvision F.resize with an int: the short side becomes size, the long side is truncated.
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def preprocess(image: Image.Image, pre: Preprocess) -> npt.NDArray[np.uint8]:
    """Resize and center crop exactly like torchvision's ImageClassification; uint8 (3, S, S)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    new_size = _resized_size(image.width, image.height, pre.resize_size)
    if new_size != image.size:
        image = image.resize(new_size, _RESAMPLE[pre.interpolation])
    pixels = np.asarray(image, dtype=np.uint8)
    crop = pre.input_size
    height, width = pixels.shape[:2]
    if crop > width or crop > height:
        # torchvision pads with zeros (left/top get the smaller half) before cropping.
        pad_w, pad_h = max(crop - width, 0), max(crop - height, 0)
        pixels = np.pad(
            pixels, ((pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2), (0, 0))
        )
        height, width = pixels.shape[:2]
    top = round((height - crop) / 2.0)
    left = round((width - crop) / 2.0)
    cropped = pixels[top : top + crop, left : left + crop]
    return np.ascontiguousarray(cropped.transpose(2, 0, 1))


def decode_and_preprocess(
    data: bytes, pre: Preprocess, *, max_pixels: int
) -> npt.NDArray[np.uint8]:
    """Decode an upload and preprocess it for a model: uint8 (3, input_size, input_size)."""
    return preprocess(decode_image(data, max_pixels=max_pixels), pre)


def normalize_batch_numpy(
    batch_uint8: npt.NDArray[np.uint8], pre: Preprocess
) -> npt.NDArray[np.float32]:
    """Reference normalisation of a uint8 (N, 3, H, W) batch: ``(x / 255 - mean) / std``."""
    mean = np.asarray(pre.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(pre.std, dtype=np.float32).reshape(1, 3, 1, 1)
    scaled = batch_uint8.astype(np.float32) / np.float32(255.0)
    result: npt.NDArray[np.float32] = (scaled - mean) / std
    return result
