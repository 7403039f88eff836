"""Hostile uploads, built byte by byte so nothing in a client library tidies them up."""

from __future__ import annotations

import select
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from tests.conftest import TEST_MODEL
from tests.images import jpeg, png_declaring

BOUNDARY = "vq-hostile-boundary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
# The security stack's VISIONQ_MAX_UPLOAD_BYTES (stack_env): 2 MiB.
MAX_UPLOAD = 2 * 1024 * 1024


def part(name: str, data: bytes, filename: str | None = None, ctype: str = "image/jpeg") -> bytes:
    """One multipart part; ``filename`` goes into the header verbatim (control bytes too)."""
    disposition = f'form-data; name="{name}"'
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}".encode()
    if filename is not None:
        head += b'; filename="' + filename.encode("utf-8", "surrogateescape") + b'"'
        head += f"\r\nContent-Type: {ctype}".encode()
    return head + b"\r\n\r\n" + data + b"\r\n"


def form(*parts: bytes, model: str = TEST_MODEL) -> bytes:
    """A whole multipart body: the parts, the model field and the closing boundary."""
    return b"".join(parts) + part("model", model.encode()) + f"--{BOUNDARY}--\r\n".encode()


def gif_bomb() -> bytes:
    """A 65535x65535 GIF (4.3 G pixels) in a few dozen bytes."""
    screen = struct.pack("<HHBBB", 65535, 65535, 0x80, 0, 0)
    palette = b"\x00\x00\x00\xff\xff\xff"
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0)
    lzw = b"\x02\x02\x44\x01\x00"  # min code size 2, one tiny sub-block, terminator
    return b"GIF89a" + screen + palette + image + lzw + b"\x3b"


def tiff_bomb() -> bytes:
    """A little-endian TIFF declaring 100000x100000 pixels of 8-bit RGB, compressed."""
    entries = [
        (256, 4, 1, 100_000),  # ImageWidth
        (257, 4, 1, 100_000),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 8),  # Compression: deflate
        (262, 3, 1, 2),  # Photometric: RGB
        (273, 4, 1, 8 + 2 + 12 * 8 + 4),  # StripOffsets: just after the IFD
        (277, 3, 1, 3),  # SamplesPerPixel
        (279, 4, 1, 16),  # StripByteCounts
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack("<HHII", tag, kind, count, value)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00\x00\x00\x00" + zlib.compress(b"")


NASTY_NAME = "../../etc/pa\x00ss\\..\\..\\boot\x01\x1b[2J\x7f\t.ini/\x07evil.jpg"


@dataclass(frozen=True)
class Hostile:
    """One hostile request: its body (None: the endless stream) and the answer it must get."""

    name: str
    body: bytes | None
    status: int
    code: str
    chunked: bool = False


def hostile_requests() -> list[Hostile]:
    """The issue's list of hostile uploads and the 4xx each must get."""
    real = jpeg(3, (64, 48))
    oversized = real + b"\x00" * (MAX_UPLOAD + 1024)
    too_big, bad, unsupported = "payload_too_large", "invalid_image", "unsupported_media_type"

    def one(name: str, data: bytes, filename: str, status: int, code: str) -> Hostile:
        return Hostile(name, form(part("file", data, filename)), status, code)

    many_files = form(*[part("file", b"x", f"{i}.jpg") for i in range(1000)])
    many_fields = form(part("file", real, "a.jpg"), *[part(f"f{i}", b"x") for i in range(1000)])
    return [
        one("zero_bytes", b"", "empty.jpg", 400, bad),
        one("truncated_jpeg", real[: len(real) // 2], "t.jpg", 400, bad),
        one("not_an_image_as_jpeg", b"%PDF-1.7\n" + b"\x00" * 200, "doc.jpg", 415, unsupported),
        one("png_30000x30000", png_declaring(30000, 30000), "big.png", 413, too_big),
        one("gif_bomb", gif_bomb(), "b.gif", 413, too_big),
        one("tiff_bomb", tiff_bomb(), "b.tif", 413, too_big),
        Hostile("1000_file_parts", many_files, 413, too_big),
        Hostile("1000_field_parts", many_fields, 422, "validation_error"),
        one("oversized_with_length", oversized, "o.jpg", 413, too_big),
        Hostile("oversized_chunked", form(part("file", oversized, "o.jpg")), 413, too_big, True),
        one("nasty_filename", b"not an image", NASTY_NAME, 415, unsupported),
        Hostile("endless_chunked", None, 413, too_big, chunked=True),
    ]


def chunks(body: bytes, size: int = 65536) -> Iterator[bytes]:
    """The body in pieces, so httpx sends it chunked, without Content-Length."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


@dataclass(frozen=True)
class StreamOutcome:
    """What happened to a client that streamed a body that never ends."""

    head: bytes
    sent_bytes: int
    seconds: float
    closed_by_server: bool


def endless_upload(port: int, headers: dict[str, str], limit_s: float = 20.0) -> StreamOutcome:
    """Stream a chunked body that never ends until an answer comes; did the server hang up?"""
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: {CONTENT_TYPE}\r\nTransfer-Encoding: chunked\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        + "\r\n"
    ).encode()
    first = part("file", b"", "endless.jpg").removesuffix(b"\r\n") + b"\xff\xd8\xff"
    piece = b"\xa5" * 65536
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    start = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        sock.sendall(head + f"{len(first):x}\r\n".encode() + first + b"\r\n")
        sock.setblocking(False)
        sent, pending, answer = 0, chunk, b""
        while time.monotonic() - start < limit_s:
            readable, writable, _ = select.select([sock], [sock], [], 0.5)
            if readable:
                answer = _read_answer(sock)
                break
            if writable:
                try:
                    n = sock.send(pending)
                except BlockingIOError:
                    continue
                sent += n
                pending = pending[n:] or chunk
        seconds = time.monotonic() - start
        return StreamOutcome(answer, sent, seconds, _closed(sock, chunk))
    finally:
        sock.close()


def _read_answer(sock: socket.socket) -> bytes:
    """The response: its head, then as much body as Content-Length says (5 s at most)."""
    data = b""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = next(
                (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                 if line.lower().startswith(b"content-length:")),
                0,
            )  # fmt: skip
            if len(body) >= length:
                break
        if select.select([sock], [], [], 0.5)[0]:
            try:
                got = sock.recv(65536)
            except BlockingIOError:
                continue
            if not got:
                break
            data += got
    return data


def _closed(sock: socket.socket, chunk: bytes) -> bool:
    """True when the server hung up within 3 s: reads hit EOF or writes are refused."""
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        readable, writable, _ = select.select([sock], [sock], [], 0.2)
        try:
            if readable and sock.recv(65536) == b"":
                return True
            if writable:
                sock.send(chunk)
        except (ConnectionResetError, BrokenPipeError):
            return True
        except BlockingIOError:
            pass
    return False
