"""ASGI middleware that caps the request body without reading it into memory.

Starlette spools file parts to disk with no cap and uvicorn does not cap bodies, so the
limit is enforced here: at once from Content-Length, and while streaming for chunked bodies.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from services.api.metrics import API_METRICS
from services.common.errors import PayloadTooLarge

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyLimitMiddleware:
    """413 ``payload_too_large`` for any body above ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            if scope.get("method") == "POST":
                API_METRICS.count_rejected("", PayloadTooLarge.code)  # model not read yet
            await _reject(send, self._message(declared))
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # Raised inside the form parser; the app's error handler renders the 413.
                    raise PayloadTooLarge(self._message(seen))
            return message

        await self.app(scope, limited_receive, send)

    def _message(self, size: int) -> str:
        return f"request body of {size}+ bytes exceeds VISIONQ_MAX_UPLOAD_BYTES={self.max_bytes}"


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _reject(send: Send, message: str) -> None:
    body = json.dumps({"error": {"code": PayloadTooLarge.code, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
