"""A small TCP proxy for fault tests: latency, connection resets and stalls, on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

from services.common.redis_server import free_port


class FaultProxy:
    """Forwards 127.0.0.1:<port> to a target port; faults are switched on and off live."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.latency_s = 0.0
        self.stalled = False
        self.refusing = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def reset_all(self) -> None:
        """Abort every open connection (like a broken link or a middlebox reset)."""
        self._loop.call_soon_threadsafe(self._abort_all)

    async def _serve(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _close(self) -> None:
        self._abort_all()
        if self._server is not None:
            self._server.close()

    def _abort_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update({writer, up_writer})
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer),
                             return_exceptions=True)  # fmt: skip
        for w in (writer, up_writer):
            self._writers.discard(w)
            with contextlib.suppress(Exception):
                w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Any:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                writer.close()
                return
            while self.stalled:  # hold the bytes, like a link that stopped moving
                await asyncio.sleep(0.05)
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            writer.write(chunk)
            await writer.drain()
