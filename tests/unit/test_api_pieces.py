"""API pieces that need no server: the body limit, file names, error shapes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.api.limits import BodyLimitMiddleware
from services.api.uploads import safe_filename
from services.common.errors import PayloadTooLarge


def _run(
    app: BodyLimitMiddleware, headers: list[tuple[bytes, bytes]], chunks: list[bytes]
) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    queue = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]

    async def receive() -> dict[str, Any]:
        return queue.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "headers": headers}
    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    return sent


async def _reader(scope: Any, receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})


def test_declared_length_over_limit_is_refused_before_reading() -> None:
    read: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        read.append(1)

    sent = _run(BodyLimitMiddleware(app, 10), [(b"content-length", b"11")], [b"x" * 11])
    assert sent[0]["status"] == 413
    assert read == []


def test_streamed_body_over_limit_raises_413() -> None:
    with pytest.raises(PayloadTooLarge):
        _run(BodyLimitMiddleware(_reader, 10), [], [b"x" * 6, b"x" * 6])


def test_body_within_limit_passes() -> None:
    sent = _run(BodyLimitMiddleware(_reader, 12), [], [b"x" * 6, b"x" * 6])
    assert sent[0]["status"] == 200


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\cat.jpg", "cat.jpg"),
        ("a\x00b\x1fc.png", "abc.png"),
        ("", "file3"),
        (None, "file3"),
        ("/", "file3"),
    ],
)
def test_safe_filename(raw: str | None, expected: str) -> None:
    assert safe_filename(raw, 3) == expected
