"""The raw limit: the same model on the same images in one process, no server at all."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from models.specs import ModelSpec


@dataclass
class RawResult:
    """Images per second of each stage, and of the whole loop per batch size."""

    device: str
    torch_threads: int
    decode_per_s: float
    forward_per_s: dict[int, float] = field(default_factory=dict)
    full_per_s: dict[int, float] = field(default_factory=dict)
    # The same loop with the next batch decoded on the decode threads while this one runs
    # its forward, as a worker overlaps them: on a CPU with spare cores, the true limit.
    pipelined_per_s: dict[int, float] = field(default_factory=dict)
    single_image_ms: float = 0.0

    def _best(self, size: int) -> float:
        return max(self.full_per_s[size], self.pipelined_per_s.get(size, 0.0))

    @property
    def best_batch(self) -> int:
        """The batch size of the fastest loop, serial or pipelined."""
        return max(self.full_per_s, key=self._best)

    @property
    def limit(self) -> float:
        """The raw limit: the fastest loop, serial or pipelined."""
        return self._best(self.best_batch)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        out = asdict(self)
        out.update(best_batch=self.best_batch, limit_per_s=self.limit)
        return out


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def _best_rate(step: Callable[[int], int], seconds: float, repeats: int = 3) -> float:
    """Best of ``repeats`` timed windows: a limit is what the machine can do when nothing
    else is running, and the best window is the least disturbed one."""
    best = 0.0
    for _ in range(repeats):
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < seconds / repeats:
            n += step(n)
        best = max(best, _rate(n, time.perf_counter() - start))
    return best


def measure_raw(
    spec: ModelSpec,
    images: list[bytes],
    batch_sizes: list[int],
    seconds: float,
    device_name: str,
    max_pixels: int = 40_000_000,
) -> RawResult:
    """Decode-only, forward-only and decode+forward+encode rates; ~``seconds`` each.

    The model runs through its handler exactly as a worker runs it (same decode, collate,
    predict, split and encode, same autocast), with default params, minus the server.
    """
    import torch

    from services.common.settings import get_worker_settings
    from services.gpu_worker.device import available_cpus, default_threads
    from services.gpu_worker.serving import build_served

    device = torch.device(device_name)
    settings = get_worker_settings().model_copy(
        update={
            "allow_random_weights": True,
            "allow_download": False,
            "max_image_pixels": max_pixels,
            "max_batch_size": max(batch_sizes),
            "fault_injection": False,
        }
    )
    # The worker's own thread count (see services/gpu_worker/device.py), so the raw limit
    # and the served stack run the forward the same way.
    default_torch, default_decode = default_threads(device.type, available_cpus())
    threads = settings.torch_threads or default_torch
    torch.set_num_threads(threads)
    # Decoded on as many threads as a worker uses (on CUDA the CPU only decodes), so the
    # limit is the served path's, not a serial one-thread decode.
    decode_threads = settings.decode_threads or default_decode
    pool = ThreadPoolExecutor(decode_threads) if decode_threads > 1 else None
    served = build_served(spec, settings, device)
    params = served.params_type()
    encode = served.handler.encode

    def forward(items: list[Any]) -> list[Any]:
        outputs = served.forward(items)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return outputs

    def decode(data: bytes) -> Any:
        return served.decode(data, params)

    items = [decode(d) for d in images]  # also warms the decoder
    forward(items[:1])
    result = RawResult(device=device_name, torch_threads=torch.get_num_threads(), decode_per_s=0)

    def decode_chunk(n: int, size: int) -> list[Any]:
        chunk = [images[(n + i) % len(images)] for i in range(size)]
        return list(pool.map(decode, chunk)) if pool else [decode(d) for d in chunk]

    # One read-ahead thread, feeding the decode pool when there is one (a worker's prepare
    # thread does the same).
    overlap = ThreadPoolExecutor(1)

    def decode_one(n: int) -> int:
        decode(images[n % len(images)])
        return 1

    result.decode_per_s = _best_rate(decode_one, seconds)
    for size in batch_sizes:
        batch = [items[i % len(items)] for i in range(size)]
        forward(batch)  # warm-up for this shape

        def forward_only(_: int, batch: list[Any] = batch) -> int:
            forward(batch)
            return len(batch)

        def full_loop(n: int, size: int = size) -> int:
            chunk = [images[(n + i) % len(images)] for i in range(size)]
            decoded = list(pool.map(decode, chunk)) if pool else [decode(d) for d in chunk]
            for output in forward(decoded):
                encode(output, params)
            return size

        ahead: list[Future[list[Any]]] = []

        def pipelined(n: int, size: int = size, ahead: list[Future[list[Any]]] = ahead) -> int:
            # Decode batch n+1 on another thread while batch n runs its forward.
            if not ahead:
                ahead.append(overlap.submit(decode_chunk, n, size))
            decoded = ahead.pop().result()
            ahead.append(overlap.submit(decode_chunk, n + size, size))
            for output in forward(decoded):
                encode(output, params)
            return size

        result.forward_per_s[size] = _best_rate(forward_only, seconds)
        result.full_per_s[size] = _best_rate(full_loop, seconds)
        result.pipelined_per_s[size] = _best_rate(pipelined, seconds)
        for pending in ahead:
            pending.result()  # the last read-ahead: nothing left running in the next window

    times = []
    for data in images[:20]:
        t = time.perf_counter()
        for output in forward([decode(data)]):
            encode(output, params)
        times.append(time.perf_counter() - t)
    result.single_image_ms = float(np.median(times) * 1000)
    overlap.shutdown()
    if pool is not None:
        pool.shutdown()
    return result
