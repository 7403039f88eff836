"""A worker that cannot serve stops at once with a message that says what to do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.common.redis_server import RedisServer
from tests.integration.stack import ROOT

pytestmark = pytest.mark.integration


def _worker(env_extra: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONQ_")}
    env.update(
        {
            "TORCH_HOME": str(tmp_path / "torch"),  # an empty hub cache
            "VISIONQ_REDIS_URL": "redis://127.0.0.1:1/0",  # never reached: it stops first
            "VISIONQ_ALLOW_DOWNLOAD": "0",
            "CUDA_VISIBLE_DEVICES": "",
        }
    )
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", "worker", "--device", "cpu"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_missing_weights_stop_the_worker_with_advice(tmp_path: Path) -> None:
    done = _worker({"VISIONQ_MODELS": "resnet18"}, tmp_path)
    assert done.returncode == 2
    assert "resnet18" in done.stderr
    assert "VISIONQ_ALLOW_RANDOM_WEIGHTS=1" in done.stderr
    assert "VISIONQ_WEIGHTS_DIR" in done.stderr


def test_bad_setting_stops_the_worker_naming_it(tmp_path: Path) -> None:
    done = _worker({"VISIONQ_MAX_BATCH_SIZE": "0"}, tmp_path)
    assert done.returncode == 2
    assert "VISIONQ_MAX_BATCH_SIZE" in done.stderr


def test_unknown_model_stops_the_worker(tmp_path: Path) -> None:
    done = _worker({"VISIONQ_MODELS": "no_such_net"}, tmp_path)
    assert done.returncode == 2
    assert "no_such_net" in done.stderr


def test_wrong_redis_password_stops_the_worker(tmp_path: Path) -> None:
    server = RedisServer(port=0, password="the-right-password-123").start()
    try:
        url = f"redis://:wrong-password-456@127.0.0.1:{server.port}/0"
        done = _worker({"VISIONQ_REDIS_URL": url, "VISIONQ_ALLOW_RANDOM_WEIGHTS": "1"}, tmp_path)
    finally:
        server.stop()
    assert done.returncode == 2
    assert "refused the credentials" in done.stderr
    assert "wrong-password-456" not in done.stderr
