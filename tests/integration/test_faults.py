"""Delivery rules under faults: a killed worker loses nothing; Redis down is a clean 503."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.common.redis_server import RedisServer
from tests.conftest import IDLE_MODEL, TEST_MODEL
from tests.images import jpeg
from tests.integration.conftest import stack_env
from tests.integration.helpers import error_code, files, predict, submit
from tests.integration.stack import Stack

pytestmark = pytest.mark.integration


@pytest.fixture()
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer(port=0, appendonly=True).start()
    try:
        yield server
    finally:
        server.stop()


def _statuses(url: str, ids: list[str]) -> dict[str, str]:
    return {i: httpx.get(f"{url}/v1/jobs/{i}", timeout=10).json()["status"] for i in ids}


def test_redis_down_gives_503_then_recovers(
    own_redis: RedisServer, models_file: Path, tmp_path: Path
) -> None:
    stack = Stack(own_redis.url, tmp_path, stack_env(models_file))
    try:
        stack.start_with_worker(models=TEST_MODEL)
        assert predict(stack.url, files(("a.jpg", jpeg(1)))).status_code == 200
        # Queued on a model no worker consumes, so its message sits in the Redis list.
        queued = submit(stack.url, files(("q.jpg", jpeg(2))), model=IDLE_MODEL)
        time.sleep(1.5)  # past one AOF fsync (appendfsync everysec)
        own_redis.kill()
        resp = predict(stack.url, files(("b.jpg", jpeg(3))))
        assert resp.status_code == 503, resp.text
        assert error_code(resp) == "broker_unavailable"
        assert httpx.get(f"{stack.url}/readyz").status_code == 503
        assert httpx.get(f"{stack.url}/healthz").status_code == 200
        own_redis.restart()
        deadline = time.monotonic() + 90
        status = 0
        while time.monotonic() < deadline:
            status = predict(stack.url, files(("c.jpg", jpeg(4)))).status_code
            if status == 200:
                break
            time.sleep(0.5)
        assert status == 200, stack.logs()
        # The queued job and its message survived the kill -9 (AOF), and stay cancellable.
        assert httpx.get(f"{stack.url}/v1/jobs/{queued[0]}").json()["status"] == "queued"
        assert own_redis.client().llen(f"gpu.{IDLE_MODEL}") == 1
        assert httpx.delete(f"{stack.url}/v1/jobs/{queued[0]}").status_code == 200
    finally:
        stack.stop_all()
