"""The API's Prometheus text, and a small separate server for it (``VISIONQ_METRICS_BIND``).

With a bind address, /metrics leaves the public port (which then answers 404) and is served
on its own address, e.g. 127.0.0.1:9200, where network policy can keep it private. The
server runs on the API's event loop, so scrapes read Redis with the same async client.
With several API processes (multiprocess metrics) each binds the port with SO_REUSEPORT:
any of them answers a scrape with every process's merged series.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable

import redis

from services.api.metrics import MULTIPROC_ENV, render_metrics
from services.api.records import live_workers
from services.api.state import ApiState
from services.common.errors import ConfigError
from services.common.jobs import LANES, queue_name

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_READ_TIMEOUT_S = 5.0

Render = Callable[[], Awaitable[bytes]]


async def scrape(state: ApiState) -> bytes:
    """Prometheus text; queue depths and live workers are read from Redis now."""
    models = state.settings.models
    depths: dict[str, int] | None = None
    live: dict[str, int] | None = None
    try:
        pipe = state.redis.pipeline(transaction=False)
        for name in models:
            for lane in LANES:
                pipe.llen(queue_name(name, lane))
        lengths = iter(await pipe.execute())
        # One series per model: the jobs waiting in all of its lanes.
        depths = {n: sum(int(next(lengths)) for _ in LANES) for n in models}
        workers = await live_workers(state.redis)
        live = {n: sum(1 for w in workers if n in w.get("models", [])) for n in models}
    except (redis.RedisError, OSError):
        pass  # absent beats stale: no queue series while Redis is away
    return render_metrics(depths, live)


async def start_metrics_server(host: str, port: int, render: Render) -> asyncio.Server:
    """Serve ``GET /metrics`` on host:port until the returned server is closed."""
    shared = bool(os.environ.get(MULTIPROC_ENV))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _answer(reader, writer, render)
        except (
            TimeoutError,
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            pass  # a slow, broken or oversized request gets no answer
        finally:
            writer.close()

    try:
        server = await asyncio.start_server(handle, host, port, reuse_port=shared or None)
    except OSError as exc:
        raise ConfigError(f"VISIONQ_METRICS_BIND={host}:{port}: cannot listen: {exc}") from exc
    logger.info("API metrics on http://%s:%d/metrics", host, port)
    return server


async def _answer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, render: Render
) -> None:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT_S)
    method, _, rest = head.split(b"\r\n", 1)[0].partition(b" ")
    path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
    if method == b"GET" and path == b"/metrics":
        status, body, ctype = b"200 OK", await render(), CONTENT_TYPE.encode()
    else:
        status, body, ctype = b"404 Not Found", b"only GET /metrics here\n", b"text/plain"
    writer.write(
        b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype
        + b"\r\nContent-Length: " + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n" + body
    )  # fmt: skip
    await asyncio.wait_for(writer.drain(), _READ_TIMEOUT_S)
