"""The worker's metrics port: /readyz says 503 while the model loads, 200 once it serves."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import httpx
import pytest

from services.common.redis_server import RedisServer, free_port
from tests.conftest import TEST_MODEL
from tests.integration.conftest import stack_env
from tests.integration.stack import Stack

pytestmark = pytest.mark.integration


def test_readyz_waits_for_the_model(models_file: Path, tmp_path: Path) -> None:
    port = free_port()
    with RedisServer(port=0) as server:
        stack = Stack(server.url, tmp_path, stack_env(models_file))
        try:
            extra = {"VISIONQ_METRICS_PORT": str(port)}
            worker = stack.start_worker(models=TEST_MODEL, extra=extra)
            seen: list[int] = []
            deadline = time.monotonic() + 120
            while not seen or seen[-1] != 200:
                assert time.monotonic() < deadline, worker.log_tail()
                assert worker.alive(), worker.log_tail()
                with contextlib.suppress(httpx.TransportError):  # not bound yet
                    seen.append(httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code)
                time.sleep(0.05)
            # The port is bound before the model loads (seconds): probes saw it loading.
            assert 503 in seen, seen
            assert set(seen) == {503, 200} and seen.index(200) == len(seen) - 1, seen
            # Ready means serving: the gauge says so, and the rest of the port is unchanged.
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            assert 'visionq_worker_up{device="cpu"} 1.0' in metrics
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
            # A probe with a typo fails instead of passing on the metrics.
            for wrong in ("/readyz/", "/ready", "/anything"):
                assert httpx.get(f"http://127.0.0.1:{port}{wrong}", timeout=5).status_code == 404
        finally:
            stack.stop_all()
