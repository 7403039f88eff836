"""``visionq api --workers N``: SIGKILL of the supervisor leaves nobody serving the port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from services.common.redis_server import RedisServer, free_port
from tests.integration.conftest import stack_env
from tests.integration.stack import ROOT, Stack

pytestmark = pytest.mark.integration


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _serving(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_supervisor_leaves_no_orphan_serving(
    redis_server: RedisServer, models_file: Path, tmp_path: Path
) -> None:
    env = Stack(redis_server.url, tmp_path, stack_env(models_file)).base_env()
    port = free_port()
    log = (tmp_path / "api.log").open("wb")
    args = ["api", "--port", str(port), "--workers", "2"]
    parent = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", *args],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    children: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(_children(parent.pid)) < 2 or not _serving(port):
            assert parent.poll() is None and time.monotonic() < deadline, (
                tmp_path / "api.log"
            ).read_text()
            time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
        children = _children(parent.pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 30
        while _serving(port) or any(Path(f"/proc/{c}").exists() for c in children):
            assert time.monotonic() < deadline, f"orphans still alive: {children}"
            time.sleep(0.2)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for child in children:  # only if the test failed: never leave them running
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        log.close()
