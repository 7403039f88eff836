"""A worker that cannot serve stops at once with a message that says what to do."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.common.redis_server import RedisServer
from tests.integration.stack import ROOT

pytestmark = pytest.mark.integration

RIGHT_PASSWORD = "the-right-password-123"
WRONG_PASSWORD = "wrong-password-456"


@dataclass
class Stopped:
    """How one worker run ended."""

    returncode: int
    stderr: str


def _spawn(env_extra: dict[str, str], folder: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONQ_")}
    env.update(
        {
            "TORCH_HOME": str(folder / "torch"),  # an empty hub cache
            "VISIONQ_REDIS_URL": "redis://127.0.0.1:1/0",  # never reached: it stops first
            "VISIONQ_ALLOW_DOWNLOAD": "0",
            "CUDA_VISIBLE_DEVICES": "",
        }
    )
    env.update(env_extra)
    with (folder / "stdout").open("wb") as out, (folder / "stderr").open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "worker", "--device", "cpu"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=err,
        )


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Stopped]]:
    """Every case's worker, all started at once (each is one process that mostly imports
    torch; side by side they use both cores), then waited for; by case name."""
    server = RedisServer(port=0, password=RIGHT_PASSWORD).start()
    cases = {
        "missing_weights": {"VISIONQ_MODELS": "resnet18"},
        "bad_setting": {"VISIONQ_MAX_BATCH_SIZE": "0"},
        "unknown_model": {"VISIONQ_MODELS": "no_such_net"},
        "wrong_password": {
            "VISIONQ_REDIS_URL": f"redis://:{WRONG_PASSWORD}@127.0.0.1:{server.port}/0",
            "VISIONQ_ALLOW_RANDOM_WEIGHTS": "1",
        },
    }
    procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    try:
        for name, extra in cases.items():
            folder = tmp_path_factory.mktemp(name)
            procs[name] = (_spawn(extra, folder), folder)
        results = {}
        for name, (proc, folder) in procs.items():
            proc.wait(timeout=120)
            stderr = (folder / "stderr").read_text(errors="replace")
            results[name] = Stopped(proc.returncode, stderr)
        yield results
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        server.stop()


def test_missing_weights_stop_the_worker_with_advice(stopped: dict[str, Stopped]) -> None:
    done = stopped["missing_weights"]
    assert done.returncode == 2
    assert "resnet18" in done.stderr
    assert "VISIONQ_ALLOW_RANDOM_WEIGHTS=1" in done.stderr
    assert "VISIONQ_WEIGHTS_DIR" in done.stderr


def test_bad_setting_stops_the_worker_naming_it(stopped: dict[str, Stopped]) -> None:
    done = stopped["bad_setting"]
    assert done.returncode == 2
    assert "VISIONQ_MAX_BATCH_SIZE" in done.stderr


def test_unknown_model_stops_the_worker(stopped: dict[str, Stopped]) -> None:
    done = stopped["unknown_model"]
    assert done.returncode == 2
    assert "no_such_net" in done.stderr


def test_wrong_redis_password_stops_the_worker(stopped: dict[str, Stopped]) -> None:
    done = stopped["wrong_password"]
    assert done.returncode == 2
    assert "refused the credentials" in done.stderr
    assert WRONG_PASSWORD not in done.stderr
