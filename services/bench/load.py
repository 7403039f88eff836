"""A light closed-loop load generator: C clients, each posting its next image on answer.

Requests are pre-encoded multipart bytes written over keep-alive connections with plain
asyncio streams, so the generator spends far less CPU per request than an HTTP client
library would; it shares the machine's cores with the stack it measures, and reports its
own CPU use.
"""

from __future__ import annotations

import asyncio
import json
import resource
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np


@dataclass
class LoadResult:
    """What C clients got in the measurement window."""

    concurrency: int
    seconds: float
    completed: int
    errors: int
    per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_batch: float
    client_cpu_cores: float
    # CPU cores used over the window by what the caller asked run_load to watch (by name).
    cpu_cores: dict[str, float] | None = None
    # The meter's figures for the window (services.bench.cpu: per process, role, machine).
    cpu: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


class Meter(Protocol):
    """Brackets the measured window (see services.bench.cpu.StackMeter)."""

    def start(self) -> None:
        """Read the counters before the window."""

    def stop(self, images: int) -> dict[str, Any]:
        """The figures of the window, for ``images`` answered images."""


def encode_request(host: str, port: int, model: str, data: bytes, name: str) -> bytes:
    """One complete POST /v1/predict request, multipart body included."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    return status, await reader.readexactly(length)


@dataclass
class _Tally:
    latencies: list[float]
    batches: list[int]
    errors: int = 0


async def _client(
    host: str, port: int, requests: list[bytes], offset: int, stop_at: float, tally: _Tally
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    i = offset
    try:
        while time.monotonic() < stop_at:
            start = time.perf_counter()
            writer.write(requests[i % len(requests)])
            status, body = await _read_response(reader)
            tally.latencies.append(time.perf_counter() - start)
            i += 1
            if status != 200:
                tally.errors += 1
                continue
            pred = json.loads(body)["predictions"][0]
            tally.batches.append(int(pred["timings"]["batch_size"]))
    finally:
        writer.close()


async def _phase(url: str, requests: list[bytes], concurrency: int, seconds: float) -> _Tally:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    tally = _Tally([], [])
    stop_at = time.monotonic() + seconds
    await asyncio.gather(
        *(_client(host, port, requests, c * 7, stop_at, tally) for c in range(concurrency))
    )
    return tally


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_load(
    url: str,
    model: str,
    images: list[bytes],
    concurrency: int,
    warmup_s: float,
    seconds: float,
    cpu_probes: Mapping[str, Callable[[], float]] | None = None,
    meter: Meter | None = None,
) -> LoadResult:
    """Warm up, then measure a fixed window of ``concurrency`` closed-loop clients.

    ``cpu_probes`` maps names to functions returning CPU seconds used so far (a process
    tree, Redis's INFO); each one's use over the window is reported in cores. ``meter``
    (started after the warm-up, stopped after the window) adds its figures as ``cpu``.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests = [encode_request(host, port, model, d, f"img{i}.jpg") for i, d in enumerate(images)]
    if warmup_s > 0:
        asyncio.run(_phase(url, requests, concurrency, warmup_s))
    probes = dict(cpu_probes or {})
    before = {name: probe() for name, probe in probes.items()}
    if meter is not None:
        meter.start()
    cpu0, wall0 = _cpu_seconds(), time.monotonic()
    tally = asyncio.run(_phase(url, requests, concurrency, seconds))
    wall = time.monotonic() - wall0
    cpu = _cpu_seconds() - cpu0
    done = len(tally.latencies) - tally.errors
    figures = meter.stop(done) if meter is not None else None
    used = {name: (probe() - before[name]) / wall for name, probe in probes.items()}
    lat = np.array(tally.latencies or [float("nan")]) * 1000
    return LoadResult(
        concurrency=concurrency,
        seconds=round(wall, 3),
        completed=done,
        errors=tally.errors,
        per_s=done / wall,
        p50_ms=float(np.percentile(lat, 50)),
        p90_ms=float(np.percentile(lat, 90)),
        p99_ms=float(np.percentile(lat, 99)),
        mean_batch=float(np.mean(tally.batches)) if tally.batches else 0.0,
        client_cpu_cores=cpu / wall if wall > 0 else 0.0,
        cpu_cores=used or None,
        cpu=figures,
    )
