"""Which image formats visionq reads, how it sniffs them, and where a complete image ends.

Validity is decided by structure, never by the last bytes: each format's segments, chunks or
boxes are walked from the start (no pixel is decoded) until the image is complete. Data
after a complete image (a JPEG's end-of-image marker, a PNG's IEND chunk, the RIFF size of a
WebP, the last box of an AVIF/HEIF) is ignored, as viewers ignore it ("motion photos" append
a video after the JPEG). A walk that runs off the end of the data means the file is
truncated (``InvalidImage``). Where a walk cannot tell (a GIF's or TIFF's compressed data
cut short inside its declared size) the decoder reports it in the job.

Sources: JPEG ITU-T T.81 B.1.1; PNG ISO/IEC 15948 5.3; RIFF/WebP container (Google);
GIF89a spec sections 17-23; BMP (Microsoft BITMAPINFOHEADER); ISO/IEC 14496-12 4.2 (boxes).
"""

from __future__ import annotations

import importlib.util
import logging
import re
from functools import lru_cache

from PIL import features

from services.common.errors import InvalidImage

logger = logging.getLogger(__name__)

# Every format this code knows, in the order the README lists them (PIL's names).
KNOWN_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "HEIF")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A marker after entropy-coded data: 0xFF followed by anything but stuffing (00), a restart
# marker (D0-D7) or another fill byte (FF).
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
# Hostile files of millions of empty segments, chunks, blocks or boxes would keep the API
# walking for seconds; real images have a few dozen (a GIF's first frame: one block per
# 255 bytes, so the cap covers any upload under 100 MB).
_MAX_JPEG_SEGMENTS = 10_000
_MAX_PNG_CHUNKS = 200_000
_MAX_GIF_BLOCKS = 400_000
_MAX_BOXES = 10_000
_BOX_TYPE = re.compile(rb"[\x20-\x7e]{4}")


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


@lru_cache
def available_formats() -> tuple[str, ...]:
    """The formats this install decodes: AVIF when Pillow has libavif, HEIF with pillow-heif."""
    found = ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"]
    if features.check("avif"):
        found.append("AVIF")
    if importlib.util.find_spec("pillow_heif") is not None:
        found.append("HEIF")
    return tuple(found)


@lru_cache
def enable_heif() -> bool:
    """Register pillow-heif's opener with Pillow (once); False when it is not installed."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


def _truncated(fmt: str, where: str) -> InvalidImage:
    return InvalidImage(f"the {fmt} data is truncated ({where})")


def _jpeg_end(data: bytes) -> int:
    n = len(data)
    pos = 2
    for _ in range(_MAX_JPEG_SEGMENTS):
        found = _JPEG_MARKER.search(data, pos)
        if found is None:
            raise _truncated("JPEG", "no end-of-image marker")
        pos = found.start()
        marker = data[pos + 1]
        if marker == 0xD9:
            return pos + 2
        if marker in (0x01, 0xD8):  # TEM, a stray SOI: no length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if pos + 4 > n or length < 2 or pos + 2 + length > n:
            # Cut short, or corrupt data that looks like a marker: with an end marker further
            # on it is corruption, which the decoder judges (that job's own failure).
            eoi = data.find(b"\xff\xd9", pos)
            if eoi < 0:
                raise _truncated("JPEG", f"segment 0x{marker:02X} runs past the end")
            return eoi + 2
        pos += 2 + length
        # After SOS comes entropy-coded data; the marker search above skips through it.
    raise InvalidImage(f"JPEG has more than {_MAX_JPEG_SEGMENTS} segments")


def _png_end(data: bytes) -> tuple[int, bytes | None]:
    n = len(data)
    pos = 8
    exif: bytes | None = None
    for _ in range(_MAX_PNG_CHUNKS):
        if pos + 12 > n:
            raise _truncated("PNG", "no IEND chunk")
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if length > 0x7FFFFFFF:
            raise InvalidImage(f"PNG chunk {kind!r} has a bad length {length}")
        if end > n:
            raise _truncated("PNG", f"chunk {kind.decode('latin-1')} runs past the end")
        if kind == b"IEND":
            return end, exif
        if kind == b"eXIf":
            exif = data[pos + 8 : pos + 8 + length]
        pos = end
    raise InvalidImage(f"PNG has more than {_MAX_PNG_CHUNKS} chunks")


def _webp_end(data: bytes) -> int:
    size = int.from_bytes(data[4:8], "little")
    end = 8 + size + (size & 1)
    if len(data) < 8 + size:
        raise _truncated("WEBP", f"the RIFF size says {size} bytes, {len(data) - 8} are here")
    return min(end, len(data))


def _gif_sub_blocks(data: bytes, pos: int, budget: list[int]) -> int:
    n = len(data)
    while True:
        budget[0] -= 1
        if budget[0] < 0:
            raise InvalidImage(f"GIF has more than {_MAX_GIF_BLOCKS} blocks before its image")
        if pos >= n:
            raise _truncated("GIF", "a data block is cut")
        size = data[pos]
        pos += 1 + size
        if size == 0:
            return pos


def _gif_end(data: bytes) -> int:
    """Where the first frame's data ends (only the first frame is read)."""
    n = len(data)
    if n < 13:
        raise _truncated("GIF", "the screen descriptor is cut")
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    budget = [_MAX_GIF_BLOCKS]
    while True:
        if pos >= n:
            raise _truncated("GIF", "no image data")
        block = data[pos]
        if block == 0x21:  # extension: label, then sub-blocks
            pos = _gif_sub_blocks(data, pos + 2, budget)
        elif block == 0x2C:  # image descriptor, local colour table, LZW code size, data
            if pos + 10 > n:
                raise _truncated("GIF", "an image descriptor is cut")
            local = data[pos + 9]
            pos += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0)
            return _gif_sub_blocks(data, pos + 1, budget)
        elif block == 0x3B:
            raise InvalidImage("the GIF holds no image")
        else:
            raise InvalidImage(f"GIF block 0x{block:02X} is not a GIF block")


def _bmp_end(data: bytes) -> int:
    if len(data) < 30:
        raise _truncated("BMP", "the header is cut")
    offset = int.from_bytes(data[10:14], "little")
    header = int.from_bytes(data[14:18], "little")
    if header == 12:  # OS/2 core header: 16-bit sizes
        width = int.from_bytes(data[18:20], "little")
        height = int.from_bytes(data[20:22], "little")
        bits, compression, size_image = int.from_bytes(data[24:26], "little"), 0, 0
    else:
        if len(data) < 38:
            raise _truncated("BMP", "the info header is cut")
        width = abs(int.from_bytes(data[18:22], "little", signed=True))
        height = abs(int.from_bytes(data[22:26], "little", signed=True))
        bits = int.from_bytes(data[28:30], "little")
        compression = int.from_bytes(data[30:34], "little")
        size_image = int.from_bytes(data[34:38], "little")
    if compression in (0, 3, 6):  # uncompressed rows, each padded to 4 bytes
        needed = offset + (width * bits + 31) // 32 * 4 * height
    else:  # RLE and embedded JPEG/PNG: the header's image size, when it gives one
        needed = offset + size_image
    if len(data) < needed:
        raise _truncated("BMP", f"{needed} bytes declared, {len(data)} here")
    return needed


def _isobmff_end(fmt: str, data: bytes) -> int:
    """Walk the top-level boxes; trailing bytes that are no box are ignored."""
    n = len(data)
    pos = 0
    for _ in range(_MAX_BOXES):
        if pos + 8 > n:
            break
        size = int.from_bytes(data[pos : pos + 4], "big")
        if _BOX_TYPE.fullmatch(data[pos + 4 : pos + 8]) is None:
            break
        header = 8
        if size == 1:
            if pos + 16 > n:
                raise _truncated(fmt, "a box header is cut")
            size, header = int.from_bytes(data[pos + 8 : pos + 16], "big"), 16
        elif size == 0:
            return n
        if size < header:
            raise InvalidImage(f"{fmt} box at {pos} has a bad size {size}")
        if pos + size > n:
            raise _truncated(fmt, f"box {data[pos + 4 : pos + 8].decode()} runs past the end")
        pos += size
    else:
        raise InvalidImage(f"{fmt} has more than {_MAX_BOXES} top-level boxes")
    if pos == 0:
        raise _truncated(fmt, "no complete box")
    return pos


def image_end(fmt: str, data: bytes) -> tuple[int, bytes | None]:
    """(bytes the image occupies, a PNG's eXIf payload); InvalidImage when it is cut short.

    TIFF is checked after its header is parsed (see ``tiff_end``), so here it spans all data.
    """
    if fmt == "JPEG":
        return _jpeg_end(data), None
    if fmt == "PNG":
        return _png_end(data)
    if fmt == "WEBP":
        return _webp_end(data), None
    if fmt == "GIF":
        _gif_end(data)
        return len(data), None
    if fmt == "BMP":
        return _bmp_end(data), None
    if fmt in ("AVIF", "HEIF"):
        return _isobmff_end(fmt, data), None
    return len(data), None


def tiff_end(tags: dict[int, object], size: int) -> None:
    """Refuse a TIFF whose first page's strips or tiles lie beyond the data."""
    offsets = tags.get(273) or tags.get(324)  # StripOffsets / TileOffsets
    counts = tags.get(279) or tags.get(325)  # StripByteCounts / TileByteCounts
    if not isinstance(offsets, tuple | list) or not isinstance(counts, tuple | list):
        return
    ends = [int(o) + int(c) for o, c in zip(offsets, counts, strict=False)]
    if ends and max(ends) > size:
        raise _truncated("TIFF", f"image data ends at byte {max(ends)}, {size} are here")
