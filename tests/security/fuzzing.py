"""Hypothesis strategies for the upload path: random bytes and mutated real images."""

from __future__ import annotations

import io

from hypothesis import strategies as st
from PIL import Image

from tests.images import encode, make_image


def _seeds() -> list[bytes]:
    """Small real images in every accepted format and a few modes and encoder options."""
    rgb = make_image(21, (48, 32))
    out = [encode(rgb, fmt) for fmt in ("JPEG", "PNG", "WEBP")]
    for mode, fmt in (("L", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("RGBA", "WEBP"), ("L", "JPEG")):
        out.append(encode(rgb.convert(mode), fmt))
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", progressive=True, quality=70)
    out.append(buf.getvalue())
    buf = io.BytesIO()
    rgb.save(buf, format="WEBP", lossless=True)
    out.append(buf.getvalue())
    # The other accepted formats get the same checks; the GIF and TIFF have two frames.
    for fmt in ("GIF", "TIFF", "BMP", "AVIF"):
        buf = io.BytesIO()
        extra = {"save_all": True, "append_images": [rgb.rotate(90)]} if fmt != "BMP" else {}
        rgb.save(buf, format=fmt, **extra)
        out.append(buf.getvalue())
    return out


SEEDS = _seeds()
MAGIC = [
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"RIFF\x00\x00\x00\x00WEBP",
    b"GIF89a",
    b"II*\x00",
    b"BM",
    b"\x00\x00\x00\x1cftypavif",
]


@st.composite
def mutated_image(draw: st.DrawFn) -> bytes:
    """A real image with 1-8 edits: bytes flipped, set, deleted, inserted, copied; or a cut."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "set", "delete", "insert", "copy", "cut"]))
        # A fraction, not an integer: hypothesis favours small integers, which would mostly
        # hit the magic number and test only the sniffing.
        at = int(draw(st.floats(0.01, 1)) * (len(data) - 1))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            # Header fields (sizes, lengths) are where 0x00 and 0xff hurt most.
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif op == "copy":
            start = int(draw(st.floats(0.01, 1)) * (len(data) - 1))
            data[at:at] = data[start : start + draw(st.integers(1, 256))]
        else:
            data = data[:at]
    return bytes(data)


def random_upload() -> st.SearchStrategy[bytes]:
    """Anything: pure noise, noise behind a real magic number, or a mutated real image."""
    noise = st.binary(max_size=4096)
    behind_magic = st.builds(lambda m, b: m + b, st.sampled_from(MAGIC), noise)
    return st.one_of(noise, behind_magic, mutated_image())


def is_image(data: bytes) -> bool:
    """True when PIL decodes the bytes fully (used to explain a 2xx in the HTTP fuzz)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
        return True
    except Exception:
        return False
