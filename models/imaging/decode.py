"""Open, check and decode uploads to the RGB picture a viewer shows (PIL and numpy, no torch).

``check_image`` is the API's cheap check: magic bytes, the header (size, mode, EXIF
orientation), the pixel limit and a structural walk for truncation (``formats.image_end``);
no pixel is decoded. ``decode_image`` repeats the checks, decodes the first frame (first page)
and makes it what a viewer shows:

- EXIF orientation 1-8 applied (a malformed tag counts as 1, upright);
- an embedded ICC profile converted to sRGB with LittleCMS (ImageCms); an sRGB profile is
  taken as is, and a profile LittleCMS refuses falls back to plain conversion, with a log line;
- 16-bit and 32-bit integer greyscale (``I;16*``, ``I``) scaled to 8 bits by ``v >> 8``
  (65535 -> 255), float (``F``) from 0..1 (or 0..255 when larger values occur);
- CMYK and YCCK JPEGs through the profile when there is one, else Pillow's plain CMYK -> RGB;
- transparency (RGBA, LA, PA, P with a transparent colour) flattened onto ``background``,
  white by default: ``out = round(rgb * a + background * (1 - a))``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from io import BytesIO

import numpy as np
from PIL import Image, ImageCms

from models.imaging.formats import (
    available_formats,
    enable_heif,
    image_end,
    sniff_format,
    tiff_end,
)
from services.common.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType

logger = logging.getLogger(__name__)

Color = tuple[int, int, int]
WHITE: Color = (255, 255, 255)

_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-f]+>")
_ORIENTATION_TAG = 0x0112
# PIL's transpose for each EXIF orientation (TIFF 6.0 / EXIF 2.32 tag 274).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")
_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


@dataclass(frozen=True)
class ImageInfo:
    """What a header says about an image; width and height as stored, before orientation."""

    format: str
    width: int
    height: int
    mode: str = ""
    orientation: int = 1  # EXIF orientation, 1-8 (1: upright)
    length: int = 0  # bytes the image occupies; anything after it is ignored
    icc: bool = False  # carries an ICC profile other than sRGB, so decoding converts colours

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) as a viewer shows it, after the EXIF orientation."""
        if self.orientation >= 5:
            return self.height, self.width
        return self.width, self.height


def _too_large(width: int, height: int, max_pixels: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"image has {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
        pixels=width * height,
        max_pixels=max_pixels,
    )


def _orientation(image: Image.Image, png_exif: bytes | None) -> int:
    try:
        if image.format == "PNG":
            # PIL's PNG getexif() decodes the pixels to find a late eXIf chunk; the
            # structural walk has already found it.
            if png_exif is None:
                return 1
            exif = Image.Exif()
            exif.load(png_exif)
        else:
            exif = image.getexif()
        value = exif.get(_ORIENTATION_TAG, 1)
    except Exception as exc:  # malformed EXIF: a viewer shows the stored pixels
        logger.debug("ignoring unreadable EXIF: %r", exc)
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _profile(image: Image.Image, quiet: bool = False) -> ImageCms.ImageCmsProfile | None:
    """The embedded ICC profile when colours must be converted; None for none or sRGB."""
    icc = image.info.get("icc_profile")
    if not icc:
        return None
    try:
        profile = ImageCms.ImageCmsProfile(BytesIO(icc))
        if "srgb" in ImageCms.getProfileDescription(profile).lower().replace(" ", ""):
            return None
    except Exception as exc:  # a broken profile: plain conversion, as browsers do
        logger.log(
            logging.DEBUG if quiet else logging.WARNING,
            "ignoring an unreadable ICC profile (%s); converting without it",
            exc,
        )
        return None
    return profile


def _open(
    data: bytes, max_pixels: int, formats: Iterable[str] | None
) -> tuple[Image.Image, ImageInfo]:
    """Open (header only) an accepted image whose size and structure pass the checks."""
    if not data:
        raise InvalidImage("the upload is empty")
    accepted = tuple(formats) if formats is not None else available_formats()
    listed = ", ".join(accepted)
    fmt = sniff_format(data)
    if fmt is None:
        if data[:4] in (b"II+\x00", b"MM\x00+"):
            # BigTIFF (64-bit offsets): Pillow reads it, but the structure walk that bounds
            # the API's cost knows classic TIFF only.
            raise UnsupportedMediaType(f"BigTIFF is not accepted; save as TIFF or send {listed}")
        raise UnsupportedMediaType(f"not an image; send {listed}")
    if fmt not in accepted or fmt not in available_formats():
        raise UnsupportedMediaType(f"{fmt} is not accepted; send {listed}", format=fmt)
    if fmt == "HEIF":
        enable_heif()
    length, png_exif = image_end(fmt, data)
    try:
        image = Image.open(BytesIO(data[:length] if length < len(data) else data), formats=[fmt])
    except Image.DecompressionBombError as exc:
        # PIL refuses huge headers before we see the size; its message carries the count.
        found = _BOMB_PIXELS.search(str(exc))
        pixels = found.group(1) if found else "too many"
        raise PayloadTooLarge(
            f"image has {pixels} pixels; the limit is {max_pixels}", max_pixels=max_pixels
        ) from exc
    except Exception as exc:  # PIL raises many types on a bad header
        # PIL names the file object ("<_io.BytesIO object at 0x...>"): nothing for a client.
        reason = _OBJECT_REPR.sub("the upload", str(exc))
        raise InvalidImage(f"cannot read the {fmt} header: {reason}") from exc
    try:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise InvalidImage(f"{fmt} header declares an empty image ({width}x{height})")
        if width * height > max_pixels:
            raise _too_large(width, height, max_pixels)
        if fmt == "TIFF":
            tiff_end(dict(getattr(image, "tag_v2", {})), len(data))
        info = ImageInfo(
            format=fmt,
            width=width,
            height=height,
            mode=image.mode,
            orientation=_orientation(image, png_exif),
            length=length,
            icc=_profile(image, quiet=True) is not None,
        )
    except BaseException:
        image.close()
        raise
    return image, info


def check_image(data: bytes, *, max_pixels: int, formats: Iterable[str] | None = None) -> ImageInfo:
    """Cheap upload check, no pixel decoded: 400 ``InvalidImage`` (empty, bad header,
    truncated), 413 ``PayloadTooLarge`` (over ``max_pixels``), 415 ``UnsupportedMediaType``
    (not an image, or a format outside ``formats``; default: all this install decodes)."""
    image, info = _open(data, max_pixels, formats)
    image.close()
    return info


def _to_8bit(image: Image.Image) -> Image.Image:
    values = np.asarray(image)
    if image.mode == "F":
        top = 1.0 if float(np.nanmax(values, initial=0.0)) <= 1.0 else 255.0
        scaled = np.nan_to_num(values / top * 255.0).clip(0, 255).round()
        return Image.fromarray(scaled.astype(np.uint8), "L")
    return Image.fromarray((values.clip(0, 65535).astype(np.uint32) >> 8).astype(np.uint8), "L")


def _colour_to_rgb(image: Image.Image, profile: ImageCms.ImageCmsProfile | None) -> Image.Image:
    if profile is not None and image.mode in ("RGB", "L", "CMYK"):
        try:
            converted = ImageCms.profileToProfile(image, profile, _SRGB, outputMode="RGB")
            if converted is not None:
                return converted
        except Exception as exc:  # PyCMSError: profile and pixels disagree, or it is broken
            logger.warning("ICC conversion failed (%s); converting without the profile", exc)
    return image if image.mode == "RGB" else image.convert("RGB")


def to_viewer_rgb(image: Image.Image, background: Color = WHITE) -> Image.Image:
    """A loaded frame as the RGB a viewer shows (colour and alpha; not the orientation)."""
    profile = _profile(image)
    alpha: Image.Image | None = None
    transparent = "transparency" in image.info  # a transparent palette entry or colour (tRNS)
    if (image.mode in ("P", "RGB") and transparent) or image.mode in ("PA", "RGBa"):
        image = image.convert("RGBA")
    elif image.mode == "La" or (image.mode == "L" and transparent):
        image = image.convert("LA")
    if image.mode in _ALPHA:
        alpha = image.getchannel("A")
        image = image.convert("L" if image.mode == "LA" else "RGB")
    if image.mode in (*_SIXTEEN_BIT, "F"):
        image = _to_8bit(image)
    rgb = _colour_to_rgb(image, profile)
    if alpha is None or alpha.getextrema() == (255, 255):
        return rgb
    return Image.composite(rgb, Image.new("RGB", rgb.size, background), alpha)


def decode_scaled(
    data: bytes,
    *,
    max_pixels: int,
    background: Color = WHITE,
    formats: Iterable[str] | None = None,
    min_side: int | None = None,
) -> tuple[Image.Image, tuple[int, int]]:
    """``decode_image``, letting libjpeg shrink a JPEG while decoding; also the full size.

    With ``min_side`` a JPEG is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT-domain
    scaling, through Pillow's ``Image.draft``: the inverse DCT of each 8x8 block is computed
    at 4x4, 2x2 or 1x1, so both the entropy-decoded data and the colour conversion shrink),
    the smallest of them that keeps BOTH sides at least ``min_side`` pixels; other formats,
    and JPEGs too small to shrink, decode in full. The pixels then differ from a full decode
    followed by a resize (a DCT-domain reduction is a box-like filter), which is why the
    caller opts in. Returns the RGB picture as shown and (width, height) of the full,
    oriented picture, for mapping coordinates back. Raises what ``decode_image`` raises.
    """
    image, info = _open(data, max_pixels, formats)
    try:
        if min_side is not None and info.format == "JPEG":
            # Pillow keeps width // s >= w and height // s >= h for the scale s it picks, so
            # a square request bounds the shorter side whatever the EXIF orientation.
            image.draft(None, (min_side, min_side))
        image.load()
        rgb = to_viewer_rgb(image, background)
    except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError, ...
        image.close()
        raise InvalidImage(f"cannot decode the {info.format} image: {exc}") from exc
    if rgb is not image:  # close() frees the pixels, so only a source we no longer return
        image.close()
    method = _TRANSPOSE.get(info.orientation)
    return (rgb if method is None else rgb.transpose(method)), info.display_size


def decode_image(
    data: bytes,
    *,
    max_pixels: int,
    background: Color = WHITE,
    formats: Iterable[str] | None = None,
) -> Image.Image:
    """Decode an upload's first frame, in full, to the RGB picture a viewer shows (see the
    module doc). Same checks and errors as ``check_image``, before any pixel is decoded; a
    decoder error (truncated or corrupt data) is ``InvalidImage``."""
    image, _ = decode_scaled(data, max_pixels=max_pixels, background=background, formats=formats)
    return image
