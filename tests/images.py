"""Deterministic test images in every accepted format."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def make_image(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A seeded picture with structure (gradients and blocks), not flat noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack(
        [
            (np.sin(x / (7 + seed % 13)) + 1) * 120,
            (np.cos(y / (5 + seed % 7)) + 1) * 120,
            (x + y) % 255,
        ],
        axis=-1,
    )
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        base[y0 : y0 + int(rng.integers(10, h // 2)), x0 : x0 + int(rng.integers(10, w // 2))] = (
            rng.integers(0, 255, 3)
        )
    return Image.fromarray(base.clip(0, 255).astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str = "JPEG") -> bytes:
    """The image's bytes in JPEG, PNG or WEBP."""
    buf = io.BytesIO()
    kwargs = {"quality": 90} if fmt in ("JPEG", "WEBP") else {}
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def jpeg(seed: int, size: tuple[int, int] = (320, 240)) -> bytes:
    """A seeded JPEG."""
    return encode(make_image(seed, size), "JPEG")


def png_declaring(width: int, height: int) -> bytes:
    """A PNG that declares width x height but carries no pixel data at all."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    body = struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    iend = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + body + iend
