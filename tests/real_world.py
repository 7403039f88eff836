"""Real-world image kinds, made with Pillow and numpy, each with what a viewer shows.

Every kind carries its bytes, the answer visionq must give (``"ok"`` or an error code), and,
for accepted kinds, the viewer-correct RGB picture built independently of visionq's decoder
(numpy for orientation, alpha, palettes and 16-bit; Pillow's plain decode for the format
itself; LittleCMS for ICC), so tests can compare visionq with torchvision on that picture.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms, features

from tests.images import make_image

WHITE = np.array([255, 255, 255], dtype=np.float64)


@dataclass(frozen=True)
class Kind:
    """One file of the corpus."""

    name: str
    data: bytes
    expect: str  # "ok", or the error code the API answers
    reference: Image.Image | None = None  # the RGB picture a viewer shows


def save(image: Image.Image, fmt: str, **options: object) -> bytes:
    """Encode with Pillow."""
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def plain(data: bytes) -> Image.Image:
    """Pillow's own decode of the first frame, no orientation, colour management or alpha."""
    with Image.open(io.BytesIO(data)) as image:
        image.seek(0)
        return image.convert("RGB")


def rgb(array: np.ndarray) -> Image.Image:
    """An RGB image from (H, W, 3) or a grey (H, W) array of 0..255 values."""
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    return Image.fromarray(np.asarray(array).round().clip(0, 255).astype(np.uint8), "RGB")


def flatten(colour: np.ndarray, alpha: np.ndarray) -> Image.Image:
    """Straight alpha over white: round(c * a + 255 * (1 - a))."""
    if colour.ndim == 2:
        colour = np.repeat(colour[..., None], 3, axis=2)
    a = alpha.astype(np.float64)[..., None] / 255.0
    return rgb(colour.astype(np.float64) * a + WHITE * (1 - a))


# EXIF orientation -> numpy operation turning the stored pixels upright (EXIF 2.32, tag 274).
ORIENT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a.transpose(1, 0, 2), 2),
    8: lambda a: np.rot90(a, 1),
}


def exif_bytes(orientation: object) -> bytes:
    """An EXIF block whose Orientation tag holds ``orientation``."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def icc_gamma_profile(gamma: float) -> bytes:
    """A minimal ICC v2 RGB display profile: sRGB primaries (D50), one gamma for all channels.

    Not sRGB, so a decoder that honours it changes the colours (ICC.1:2001-04 layout).
    """
    xyz = {  # sRGB colorants adapted to D50, as in the sRGB profile
        b"wtpt": (0.9642, 1.0, 0.8249),
        b"rXYZ": (0.4361, 0.2225, 0.0139),
        b"gXYZ": (0.3851, 0.7169, 0.0971),
        b"bXYZ": (0.1431, 0.0606, 0.7141),
    }
    tags: list[tuple[bytes, bytes]] = [
        (sig, b"XYZ \x00\x00\x00\x00" + b"".join(_s15(v) for v in value))
        for sig, value in xyz.items()
    ]
    curve = b"curv\x00\x00\x00\x00" + struct.pack(">IH", 1, round(gamma * 256)) + b"\x00\x00"
    tags += [(b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    text = b"visionq test gamma profile\x00"
    desc = b"desc\x00\x00\x00\x00" + struct.pack(">I", len(text)) + text + b"\x00" * 79
    tags += [(b"desc", desc), (b"cprt", b"text\x00\x00\x00\x00public domain\x00")]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for sig, payload in tags:
        payload += b"\x00" * (-len(payload) % 4)
        table += sig + struct.pack(">II", offset + len(body), len(payload))
        body += payload
    size = offset + len(body)
    header = (
        struct.pack(">I", size)
        + b"lcms"
        + struct.pack(">I", 0x02100000)
        + b"mntrRGB XYZ "
        + b"\x00" * 12
        + b"acsp"
        + b"\x00" * 24
        + struct.pack(">I", 0)
        + _s15(0.9642)
        + _s15(1.0)
        + _s15(0.8249)
        + b"\x00" * 48
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def ycck_jpeg(cmyk: Image.Image) -> bytes:
    """A YCCK (Adobe transform 2) JPEG that decodes to ``cmyk``.

    Pillow writes only plain CMYK, so the YCC components are computed here (JFIF equations,
    on the inverted CMY as Adobe does), written as a CMYK JPEG, and the Adobe marker's
    transform byte is set to 2: libjpeg then converts them back on decoding.
    """
    c = np.asarray(cmyk).astype(np.float64)
    r, g, b = c[..., 0], c[..., 1], c[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    stored = np.stack([y, cb, cr, 255 - c[..., 3]], axis=-1).round().clip(0, 255)
    # Pillow stores CMYK inverted (Adobe convention); invert first so the file holds `stored`.
    data = bytearray(
        save(Image.fromarray((255 - stored).astype(np.uint8), "CMYK"), "JPEG", quality=98)
    )
    at = data.index(b"Adobe")
    assert data[at + 11] == 0, "expected a plain CMYK Adobe marker"
    data[at + 11] = 2
    return bytes(data)


def gif_bomb() -> bytes:
    """A 65535x65535 GIF (4.3 G pixels) in a few dozen bytes."""
    screen = struct.pack("<HHBBB", 65535, 65535, 0x80, 0, 0)
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0)
    return b"GIF89a" + screen + b"\x00" * 6 + image + b"\x02\x02\x44\x01\x00\x3b"


def corpus(size: tuple[int, int] = (160, 120)) -> list[Kind]:
    """Every kind: orientation, appended data, truncation, pixel modes, ICC, formats, sizes."""
    w, h = size
    picture = make_image(3, size)
    pixels = np.asarray(picture)
    rng = np.random.default_rng(5)
    kinds: list[Kind] = []

    base_jpeg = save(picture, "JPEG", quality=92)
    for k in range(1, 9):
        data = save(picture, "JPEG", quality=92, exif=exif_bytes(k))
        upright = rgb(np.ascontiguousarray(ORIENT[k](np.asarray(plain(data)))))
        kinds.append(Kind(f"orientation_{k}.jpg", data, "ok", upright))
    for name, exif in (
        ("orientation_99", exif_bytes(99)),
        ("exif_garbage", b"Exif\x00\x00II*\x00\xff"),
    ):
        data = save(picture, "JPEG", quality=92, exif=exif)
        kinds.append(Kind(f"{name}.jpg", data, "ok", plain(data)))
    png_orient = save(picture, "PNG", exif=exif_bytes(6))
    kinds.append(Kind("orientation_6.png", png_orient, "ok", rgb(np.rot90(pixels, -1))))

    junk = rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    for fmt, suffix in (("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp")):
        data = (
            base_jpeg
            if fmt == "JPEG"
            else save(picture, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
        )
        kinds.append(Kind(f"appended.{suffix}", data + b"\xff\xd9" + junk, "ok", plain(data)))
        kinds.append(Kind(f"truncated.{suffix}", data[: len(data) // 2], "invalid_image"))

    grey = ((pixels[..., 0].astype(np.uint16) * 3 + pixels[..., 1]) // 4).astype(np.uint8)
    alpha = np.tile(np.linspace(0, 255, w).round().astype(np.uint8), (h, 1))
    kinds.append(
        Kind(
            "mode_1.png", save(Image.fromarray(grey > 128), "PNG"), "ok", rgb((grey > 128) * 255.0)
        )
    )
    kinds.append(Kind("mode_L.png", save(Image.fromarray(grey, "L"), "PNG"), "ok", rgb(grey)))
    la = Image.fromarray(np.stack([grey, alpha], -1), "LA")
    kinds.append(Kind("mode_LA.png", save(la, "PNG"), "ok", flatten(grey, alpha)))
    rgba = Image.fromarray(np.dstack([pixels, alpha]), "RGBA")
    kinds.append(Kind("mode_RGBA.png", save(rgba, "PNG"), "ok", flatten(pixels, alpha)))
    kinds.append(
        Kind("mode_RGBA.webp", save(rgba, "WEBP", lossless=True), "ok", flatten(pixels, alpha))
    )
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    index = (grey // 16).astype(np.uint8)
    p_image = Image.fromarray(index, "P")
    p_image.putpalette(palette.tobytes())
    kinds.append(Kind("mode_P.png", save(p_image, "PNG"), "ok", rgb(palette[index])))
    p_alpha = np.where(index == 3, 0, 255).astype(np.uint8)
    kinds.append(
        Kind(
            "mode_P_transparent.png",
            save(p_image, "PNG", transparency=3),
            "ok",
            flatten(palette[index], p_alpha),
        )
    )
    deep = (grey.astype(np.uint16) * 257 + rng.integers(0, 257, grey.shape)).astype(np.uint16)
    kinds.append(Kind("mode_I16.png", save(Image.fromarray(deep), "PNG"), "ok", rgb(deep >> 8)))
    kinds.append(Kind("mode_I16.tif", save(Image.fromarray(deep), "TIFF"), "ok", rgb(deep >> 8)))
    big_endian = save(Image.fromarray(deep.astype(">u2")), "TIFF")
    kinds.append(Kind("mode_I16B.tif", big_endian, "ok", rgb(deep >> 8)))
    wide = save(Image.fromarray(deep.astype(np.int32)), "TIFF")
    kinds.append(Kind("mode_I32.tif", wide, "ok", rgb(deep >> 8)))
    cmyk = picture.convert("CMYK")
    cmyk_jpeg = save(cmyk, "JPEG", quality=95)
    kinds.append(Kind("mode_CMYK.jpg", cmyk_jpeg, "ok", plain(cmyk_jpeg)))
    ycck = ycck_jpeg(cmyk)
    kinds.append(Kind("mode_YCCK.jpg", ycck, "ok", plain(ycck)))

    profile = ImageCms.ImageCmsProfile(io.BytesIO(icc_gamma_profile(1.0)))
    icc_data = save(picture, "PNG", icc_profile=icc_gamma_profile(1.0))
    converted = ImageCms.profileToProfile(
        plain(icc_data), profile, ImageCms.createProfile("sRGB"), outputMode="RGB"
    )
    assert converted is not None
    kinds.append(Kind("icc_linear.png", icc_data, "ok", converted))
    broken = save(picture, "JPEG", quality=92, icc_profile=b"this is no ICC profile at all")
    kinds.append(Kind("icc_broken.jpg", broken, "ok", plain(broken)))

    second = make_image(9, size)
    for fmt, suffix in (("GIF", "gif"), ("TIFF", "tif"), ("WEBP", "webp")):
        extra = {"lossless": True} if fmt == "WEBP" else {}
        data = save(picture, fmt, save_all=True, append_images=[second], **extra)
        kinds.append(Kind(f"two_frames.{suffix}", data, "ok", plain(data)))
    bmp = save(picture, "BMP")
    kinds.append(Kind("picture.bmp", bmp, "ok", plain(bmp)))
    kinds.append(Kind("truncated.bmp", bmp[: len(bmp) // 2], "invalid_image"))
    tif = save(picture, "TIFF")
    kinds.append(Kind("truncated.tif", tif[: len(tif) // 2], "invalid_image"))
    if features.check("avif"):
        avif = save(picture, "AVIF", quality=90)
        kinds.append(Kind("picture.avif", avif, "ok", plain(avif)))
        kinds.append(Kind("truncated.avif", avif[: len(avif) // 2], "invalid_image"))
        # Pillow keeps AVIF's irot/imir as an EXIF orientation and leaves the pixels alone.
        turned = save(picture, "AVIF", quality=90, exif=exif_bytes(6))
        upright = rgb(np.ascontiguousarray(ORIENT[6](np.asarray(plain(turned)))))
        kinds.append(Kind("orientation_6.avif", turned, "ok", upright))
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
        heic = save(picture, "HEIF", quality=90)
        kinds.append(Kind("picture.heic", heic, "ok", plain(heic)))
        # pillow-heif applies irot/imir itself and resets the EXIF orientation to 1.
        turned = save(picture, "HEIF", quality=90, exif=exif_bytes(6))
        assert plain(turned).size == (h, w)
        kinds.append(Kind("orientation_6.heic", turned, "ok", plain(turned)))
    except ImportError:
        pass

    thin = make_image(4, (1000, 40)).resize((24, 1000))
    kinds.append(Kind("thin_24x1000.png", save(thin, "PNG"), "ok", thin))
    kinds.append(
        Kind("thin_1x30000.png", save(Image.new("RGB", (1, 30000), (200, 40, 90)), "PNG"), "ok")
    )
    kinds.append(
        Kind("thin_30000x1.png", save(Image.new("RGB", (30000, 1), (20, 140, 90)), "PNG"), "ok")
    )
    kinds.append(Kind("bomb.gif", gif_bomb(), "payload_too_large"))
    kinds.append(Kind("notes.tiff", b"II*\x00 not really a TIFF", "invalid_image"))
    kinds.append(
        Kind("icon.bmp", save(Image.new("RGB", (16, 16)), "ICO"), "unsupported_media_type")
    )
    return kinds
