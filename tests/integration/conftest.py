"""Integration fixtures: a real redis-server on a free port and the real stack over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.redis_server import RedisServer, free_port
from tests.conftest import IDLE_MODEL, TEST_MODEL, TINY_MODEL
from tests.integration.stack import Stack


def stack_env(models_file: Path, **extra: str) -> dict[str, str]:
    """The settings every test stack shares, plus overrides."""
    env = {
        "VISIONQ_MODELS": f"{TEST_MODEL},{IDLE_MODEL},{TINY_MODEL}",
        "VISIONQ_MODELS_FILE": str(models_file),
        "VISIONQ_MAX_BATCH_SIZE": "16",
        "VISIONQ_MAX_WAIT_MS": "20",
        "VISIONQ_VISIBILITY_TIMEOUT_S": "8",
        "VISIONQ_BATCH_TIME_LIMIT_S": "2.5",
        "VISIONQ_UNACKED_RESTORE_INTERVAL_S": "1",
        "VISIONQ_HEARTBEAT_INTERVAL_S": "0.5",
        "VISIONQ_MAX_UPLOAD_BYTES": str(2 * 1024 * 1024),
        "VISIONQ_MAX_IMAGE_PIXELS": str(4_000_000),
        "VISIONQ_MAX_FILES_PER_REQUEST": "32",
        "VISIONQ_PREDICT_TIMEOUT_S": "60",
    }
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the session's shared stack."""
    server = RedisServer(port=0).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def stack(
    redis_server: RedisServer, models_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """API + one CPU worker, shared by the tests that do not break anything."""
    s = Stack(redis_server.url, tmp_path_factory.mktemp("stack"), stack_env(models_file))
    try:
        s.worker_metrics_port = free_port()
        s.start_with_worker(
            models=f"{TEST_MODEL},{TINY_MODEL}",
            extra={"VISIONQ_METRICS_PORT": str(s.worker_metrics_port)},
        )
        yield s
    finally:
        s.stop_all()
