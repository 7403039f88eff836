"""Run ``visionq up`` as a child process for the length of one benchmark phase."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from services.common.redis_server import free_port


@contextmanager
def running_stack(
    model: str,
    overrides: dict[str, str],
    timeout_s: float = 180.0,
    redis_port: int = 0,
    pids: list[int] | None = None,
    api_workers: int = 1,
    workers: int | None = None,
) -> Iterator[str]:
    """Start the whole stack with these VISIONQ_* overrides; yield its URL; stop it.

    ``redis_port`` fixes the embedded Redis's port (0: any free one) and ``pids`` receives
    the ``visionq up`` process id, for a caller that measures their CPU; ``api_workers``
    is the API's process count (``visionq up --api-workers``), ``workers`` the worker count
    (``visionq up --workers``; None: up's default).
    """
    port = free_port()
    env = dict(os.environ)
    env.setdefault("VISIONQ_ALLOW_RANDOM_WEIGHTS", "1")  # benchmarks need no real weights
    env.update(
        {
            "VISIONQ_MODELS": model,
            "VISIONQ_DEFAULT_MODEL": model,
            "VISIONQ_METRICS_PORT": "0",
            "VISIONQ_LOG_LEVEL": "WARNING",
            **overrides,
        }
    )
    log = Path(tempfile.mkstemp(prefix="visionq-bench-", suffix=".log")[1])
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "up", "--port", str(port),
             "--redis-port", str(redis_port), "--api-workers", str(api_workers),
             *(["--workers", str(workers)] if workers is not None else [])],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    if pids is not None:
        pids.append(proc.pid)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"visionq up exited:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"visionq up not ready:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.unlink(missing_ok=True)
